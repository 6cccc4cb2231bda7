#!/usr/bin/env bash
# Paper 001's training runs on a Graphcore IPU-POD16 (16 IPUs), pipelined and replicated.
#
# Expects: the Poplar SDK enabled (source <sdk>/enable.sh) and a Python 3.8 environment with
# its TensorFlow 2.6 wheel, ipu_tensorflow_addons, popdist and this package installed
# (pip install -e . --no-deps); ImageNet prepared for tensorflow-datasets in $TFDS_DIR.
#
# Usage: launch/pod16.sh b0,g16,ln_pn,half runs/b0_g16_lnpn_half
#
# The configuration (experiments/paper_ipu.py) sets the stages (ipus_per_replica) and the
# replicas (16 / stages); poprun starts one instance per replica. This project has not
# run it: no IPU was available where it was developed.
set -euo pipefail
ARG=${1:?"size,gG,norm,resolution, e.g. b0,g16,ln_pn,half"}
WORKDIR=${2:?"workdir"}
STAGES=$(python -c "import importlib.util as u; s=u.spec_from_file_location('p','experiments/paper_ipu.py'); m=u.module_from_spec(s); s.loader.exec_module(m); print(m.get_config('$ARG').strategy.ipus_per_replica)")
REPLICAS=$((16 / STAGES))
poprun --num-instances "$REPLICAS" --num-replicas "$REPLICAS" --ipus-per-replica "$STAGES" \
    python -m efficientnet_ipu.main --config="experiments/paper_ipu.py:$ARG" \
    --workdir="$WORKDIR" --config.dataset.data_dir="${TFDS_DIR:?set TFDS_DIR}"
