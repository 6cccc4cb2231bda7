"""Paper 001's ImageNet runs as they ran: 16 IPUs (a POD16), pipelined and replicated
(paper 001 sec. 3.4). The same argument as ``experiments/paper.py``:

    poprun --num-instances 8 --num-replicas 8 --ipus-per-replica 2 \
        python -m efficientnet_ipu.main --config=experiments/paper_ipu.py:b0,g16,ln_pn,half \
        --workdir=runs/b0_g16_lnpn_half

(``launch/pod16.sh`` holds the full command.) Pipeline stages: Graphcore's split points
(``pipeline.PAPER_SPLITS``: 2 stages for B0 and B1-G16, 4 for the others where published)
and, for configurations without published splits, 4 stages balanced by multiply-adds.
Replicas = 16 / stages. Global batch 768 = micro-batch x gradient accumulation x replicas:
micro-batch 16 over 2 stages (accumulation 6), 8 over 4 stages (accumulation 24); these
micro-batch sizes are ours (the paper does not list them). fp16 with static loss scale 128,
stochastic rounding, recomputation, half partials. Validation runs on one IPU. No IPU run
of this configuration was made by this project.
"""
import importlib.util
import os

from efficientnet_ipu import pipeline

_spec = importlib.util.spec_from_file_location(
    "paper_experiment", os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper.py"))
paper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper)

GLOBAL_BATCH = 768
IPUS = 16
MICRO_BATCH = {2: 16, 4: 8}   # by pipeline stages


def get_config(arg=None):
    size, group_size, norm, resolution = paper.parse_arg(arg)
    c = paper.get_config(arg)
    splits = pipeline.PAPER_SPLITS.get((size, group_size))
    stages = len(splits) + 1 if splits else 4
    c.strategy.name = "ipu"
    c.strategy.ipus_per_replica = stages
    c.strategy.replicas = IPUS // stages
    c.strategy.pipeline_splits = ",".join(splits) if splits else ""
    c.train.micro_batch_size = MICRO_BATCH[stages]
    c.train.gradient_accumulation = GLOBAL_BATCH // (MICRO_BATCH[stages] * c.strategy.replicas)
    c.train.precision = "fp16"
    c.train.loss_scale = "128"
    return c
