"""B3, group size 16, GN (4 groups), half resolution (train 204 px, evaluate 300 px), ImageNet.

    python -m efficientnet_ipu.main --config=experiments/b3_g16_gn_half.py --workdir=runs/b3_g16_gn_half \
        --config.dataset.data_dir=TFDS_DIR [--config.dataset.manual_dir=ILSVRC2012_TARS]

Recipe of paper 001 sec. 3.4 (350 epochs, global batch 768 = 32 x 24 accumulation, RMSProp).
Expected: ImageNet top-1 81.2 ± 0.1 % at 300 px after the paper's 2-epoch fine-tuning at 300 px (paper 001 Table 4); this program does not fine-tune yet, so the evaluation at 300 px after training at 204 px comes out lower.
"""
from efficientnet_ipu.config import paper_config


def get_config():
    return paper_config('b3', 16, 'gn', 'half')
