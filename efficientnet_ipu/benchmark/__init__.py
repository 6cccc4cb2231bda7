"""Throughput and latency benchmark, run side by side in one process.

    python -m efficientnet_ipu.benchmark --sizes=b0 --group-sizes=1,16 --norms=bn,ln_pn \
        --resolutions=224,160 --batch=32 --csv=benchmark.csv
    python -m efficientnet_ipu.benchmark --conv          # GroupConv2D vs dense convolution
    python -m efficientnet_ipu.benchmark --layers --group-sizes=1 --steps=20
                                                         # each layer: ours vs TensorFlow's
    python -m efficientnet_ipu.benchmark --layers --group-sizes=16 --kernel-variants
                                         # ... and auto's kernels vs their AVX-512 direct
                                         # and AVX2 blocks (a new CPU's check of auto)
    python -m efficientnet_ipu.benchmark --optimizers --group-sizes=16 --norms=gn \
        --resolutions=32 --steps=30                      # the optimizer update's cost
    python -m efficientnet_ipu.benchmark --pipeline=image_folder:../shared/data/imagenette2_224 \
        --pipeline-split=val                             # input pipeline images/s
    python -m efficientnet_ipu.benchmark --pool-rounds=a_rounds.csv,b_rounds.csv
                                         # the model targets of several runs' rounds pooled

For every (size, G, norm, resolution) it prints and writes to CSV: training images/s
(forward + backward + optimizer update: ``--optimizer``, by default the training
program's RMSProp), inference images/s, batch-1 latency (ms), MACs per image,
achieved GFLOP/s (2 FLOPs per MAC; training counts 3x the forward MACs) and that as a
fraction of the dense 3x3 convolution peak measured in the same run, and the ratios to
keras.applications' EfficientNet of the same size at the same batch and resolution.
Times are medians over ``--steps`` timed calls after ``--warmup`` untimed ones; all the
models of one size and resolution (keras.applications' included) and all the convolution
and normalization variants are timed in interleaved rounds, so that the load of this shared
machine affects the entries of one table alike and their ratios are meaningful.

It ends with the speed targets (``TARGETS``) (``target_rows``): each is the median over rounds of
the ratio of two entries timed in the same round, with its 95 % confidence interval
(``median_ci``) and the interquartile range of single rounds, judged "yes" or "no" when
the whole interval meets or misses the goal and "within noise" when it straddles it,
and written to ``<csv>_targets.csv``. Every round's training step times go to
``<csv>_rounds.csv`` (``round_rows``); ``--pool-rounds`` recomputes the model targets from
several runs' rounds together (``pooled_round_times``), each round still paired with the
entries timed beside it.
"""
import efficientnet_ipu  # noqa: F401  (before TensorFlow: enables oneDNN)

from efficientnet_ipu.benchmark.cli import main, parse_list, resolve_resolutions  # noqa: F401
from efficientnet_ipu.benchmark.entries import *  # noqa: F401,F403
from efficientnet_ipu.benchmark.layer_tables import *  # noqa: F401,F403
from efficientnet_ipu.benchmark.targets import *  # noqa: F401,F403
from efficientnet_ipu.benchmark.targets import _model_label, _target  # noqa: F401
from efficientnet_ipu.benchmark.timing import *  # noqa: F401,F403
from efficientnet_ipu.benchmark.timing import _sync  # noqa: F401
