"""Paper 001's ImageNet runs (Tables 2-5), one config with arguments (big_vision style).

    python -m efficientnet_ipu.main --config=experiments/paper.py:b2,g16,ln_pn,half \
        --workdir=runs/b2_g16_lnpn_half \
        --config.dataset.data_dir=TFDS_DIR [--config.dataset.manual_dir=ILSVRC2012_TARS]

The argument is ``size,gG,norm,resolution``: size b0-b5, group size g1 or g16, norm gn or
ln_pn, resolution native or half (paper 001 Table 1; evaluation at the native size). The
recipe is paper 001 sec. 3.4: 350 epochs, global batch 768 = 32 x 24 accumulation,
RMSProp, Mixup and CutMix per size. Then the rest of the method, each stage resumable:
the averaged weights are fine-tuned at the native size (last 2 blocks, 2 epochs, SGD,
global batch 512), swept over the test sizes of the training size's residue mod 32 up to
700 px (``<workdir>/sweep/``), and the fine-tuned model is exported. Tables 4-5
report the best of 1, 2 and 3 fine-tuned blocks:
``python -m efficientnet_ipu.finetune --workdir=DIR --blocks=1,3`` adds the other two, and
``python -m efficientnet_ipu.evaluate --workdir=DIR --image_sizes=...`` sweeps them.

Expected ImageNet top-1 at the native size, mean ± std of 3 runs in % (paper 001 Tables
2-4): ``eval_results.json`` holds the figure without fine-tuning (half-resolution runs
come out lower there: they have not seen the native size), and
``finetune/r<native>_b2/eval_results.json`` the fine-tuned one. "best" is Table 5: fine-tuned
and tested at the best size, which ``sweep/sweep.csv`` covers (fine-tune at that size with
``python -m efficientnet_ipu.finetune --workdir=DIR --image_size=R``):

    b0,g16,gn,half         76.7 ± 0.2 (after 2-epoch fine-tuning at the native size); best 77.8 ± 0.1 at 352 px
    b0,g16,gn,native       76.2 ± 0.3 (no fine-tuning), 76.4 ± 0.1 (after 2-epoch fine-tuning); best 79.1 ± 0.1 at 416 px
    b0,g16,ln_pn,half      77.3 ± 0.1 (after 2-epoch fine-tuning at the native size); best 78.3 ± 0.1 at 384 px
    b0,g16,ln_pn,native    76.8 ± 0.1 (no fine-tuning), 77.0 ± 0.2 (after 2-epoch fine-tuning); best 79.4 ± 0.0 at 448 px
    b0,g1,gn,native        76.2 ± 0.1 (no fine-tuning), 76.4 ± 0.1 (after 2-epoch fine-tuning); best 79.1 ± 0.2 at 480 px
    b1,g16,gn,half         78.9 ± 0.0 (after 2-epoch fine-tuning at the native size); best 80.0 ± 0.1 at 400 px
    b1,g16,gn,native       78.3 ± 0.1 (no fine-tuning), 78.6 ± 0.1 (after 2-epoch fine-tuning); best 80.8 ± 0.0 at 528 px
    b1,g16,ln_pn,half      79.4 ± 0.1 (after 2-epoch fine-tuning at the native size); best 80.5 ± 0.1 at 400 px
    b1,g16,ln_pn,native    79.0 ± 0.1 (no fine-tuning), 79.2 ± 0.1 (after 2-epoch fine-tuning); best 81.3 ± 0.1 at 528 px
    b1,g1,gn,native        78.2 ± 0.1 (no fine-tuning), 78.4 ± 0.0 (after 2-epoch fine-tuning); best 80.8 ± 0.2 at 528 px
    b2,g16,gn,half         79.8 ± 0.1 (after 2-epoch fine-tuning at the native size); best 80.8 ± 0.1 at 388 px
    b2,g16,gn,native       79.4 ± 0.1 (no fine-tuning), 79.7 ± 0.1 (after 2-epoch fine-tuning); best 81.5 ± 0.1 at 516 px
    b2,g16,ln_pn,half      80.4 ± 0.1 (after 2-epoch fine-tuning at the native size); best 81.2 ± 0.0 at 420 px
    b2,g16,ln_pn,native    79.9 ± 0.1 (no fine-tuning), 80.0 ± 0.2 (after 2-epoch fine-tuning); best 81.8 ± 0.1 at 516 px
    b2,g1,gn,native        79.2 ± 0.2 (no fine-tuning), 79.4 ± 0.2 (after 2-epoch fine-tuning); best 81.4 ± 0.1 at 548 px
    b3,g16,gn,half         81.2 ± 0.1 (after 2-epoch fine-tuning at the native size); best 81.7 ± 0.0 at 460 px
    b3,g16,gn,native       80.9 ± 0.1 (no fine-tuning), 81.0 ± 0.1 (after 2-epoch fine-tuning); best 82.3 ± 0.1 at 588 px
    b3,g16,ln_pn,half      81.6 ± 0.1 (after 2-epoch fine-tuning at the native size); best 82.0 ± 0.1 at 396 px
    b3,g16,ln_pn,native    81.3 ± 0.1 (no fine-tuning), 81.4 ± 0.2 (after 2-epoch fine-tuning); best 82.6 ± 0.0 at 556 px
    b3,g1,gn,native        80.6 ± 0.0 (no fine-tuning), 80.8 ± 0.1 (after 2-epoch fine-tuning); best 82.1 ± 0.0 at 652 px
    b4,g16,gn,half         82.6 ± 0.1 (after 2-epoch fine-tuning at the native size); best 82.7 ± 0.1 at 508 px
    b4,g16,gn,native       82.3 ± 0.1 (no fine-tuning), 82.4 ± 0.1 (after 2-epoch fine-tuning); best 83.2 ± 0.1 at 572 px
    b4,g16,ln_pn,half      82.8 ± 0.1 (after 2-epoch fine-tuning at the native size); best 83.0 ± 0.1 at 444 px
    b4,g16,ln_pn,native    82.6 ± 0.1 (no fine-tuning), 82.7 ± 0.1 (after 2-epoch fine-tuning); best 83.4 ± 0.1 at 604 px
    b4,g1,gn,native        82.0 ± 0.0 (no fine-tuning), 82.1 ± 0.1 (after 2-epoch fine-tuning); best 82.9 ± 0.1 at 668 px
    b5,g16,gn,half         83.5 ± 0.1 (after 2-epoch fine-tuning at the native size); best 83.6 ± 0.1 at 424 px
    b5,g16,gn,native       83.4 ± 0.1 (no fine-tuning), 83.5 ± 0.1 (after 2-epoch fine-tuning); best 84.0 ± 0.1 at 648 px
    b5,g16,ln_pn,half      83.8 ± 0.1 (after 2-epoch fine-tuning at the native size); best 83.8 ± 0.0 at 488 px
    b5,g16,ln_pn,native    83.4 ± 0.1 (no fine-tuning), 83.5 ± 0.1 (after 2-epoch fine-tuning); best 84.0 ± 0.1 at 616 px
    b5,g1,gn,native        82.8 ± 0.1 (no fine-tuning), 82.9 ± 0.1 (after 2-epoch fine-tuning); best 83.4 ± 0.1 at 680 px
"""
from efficientnet_ipu.config import paper_config

SIZES = ("b0", "b1", "b2", "b3", "b4", "b5")
GROUP_SIZES = {"g1": 1, "g16": 16}
NORMS = ("gn", "ln_pn")
RESOLUTIONS = ("native", "half")


def parse_arg(arg):
    """(size, group_size, norm, resolution) from "b2,g16,ln_pn,half".

    Raises:
      ValueError: naming the part that is wrong and the allowed values.
    """
    parts = [p.strip() for p in (arg or "").split(",")]
    if len(parts) != 4:
        raise ValueError("experiments/paper.py takes 'size,gG,norm,resolution', e.g. "
                         "'b2,g16,ln_pn,half'; got %r" % (arg,))
    size, group, norm, resolution = parts
    for field, value, allowed in (("size", size, SIZES), ("group size", group, GROUP_SIZES),
                                  ("norm", norm, NORMS),
                                  ("resolution", resolution, RESOLUTIONS)):
        if value not in allowed:
            raise ValueError("experiments/paper.py %s must be one of %s, got %r"
                             % (field, list(allowed), value))
    return size, GROUP_SIZES[group], norm, resolution


def get_config(arg=None):
    return paper_config(*parse_arg(arg))
