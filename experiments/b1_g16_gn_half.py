"""B1, group size 16, GN (4 groups), half resolution (train 176 px, evaluate 240 px), ImageNet.

    python -m efficientnet_ipu.main --config=experiments/b1_g16_gn_half.py --workdir=runs/b1_g16_gn_half \
        --config.dataset.data_dir=TFDS_DIR [--config.dataset.manual_dir=ILSVRC2012_TARS]

Recipe of paper 001 sec. 3.4 (350 epochs, global batch 768 = 32 x 24 accumulation, RMSProp).
Expected: ImageNet top-1 78.9 ± 0.0 % at 240 px after the paper's 2-epoch fine-tuning at 240 px (paper 001 Table 4); this program does not fine-tune yet, so the evaluation at 240 px after training at 176 px comes out lower.
"""
from efficientnet_ipu.config import paper_config


def get_config():
    return paper_config('b1', 16, 'gn', 'half')
