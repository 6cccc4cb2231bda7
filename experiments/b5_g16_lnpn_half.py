"""B5, group size 16, LN + proxy-normalized activations, half resolution (train 328 px, evaluate 456 px), ImageNet.

    python -m efficientnet_ipu.main --config=experiments/b5_g16_lnpn_half.py --workdir=runs/b5_g16_lnpn_half \
        --config.dataset.data_dir=TFDS_DIR [--config.dataset.manual_dir=ILSVRC2012_TARS]

Recipe of paper 001 sec. 3.4 (350 epochs, global batch 768 = 32 x 24 accumulation, RMSProp).
Expected: ImageNet top-1 83.8 ± 0.1 % at 456 px after the paper's 2-epoch fine-tuning at 456 px (paper 001 Table 4); this program does not fine-tune yet, so the evaluation at 456 px after training at 328 px comes out lower.
"""
from efficientnet_ipu.config import paper_config


def get_config():
    return paper_config('b5', 16, 'ln_pn', 'half')
