"""B3, group size 16, LN + proxy-normalized activations, native resolution (train 300 px, evaluate 300 px), ImageNet.

    python -m efficientnet_ipu.main --config=experiments/b3_g16_lnpn_native.py --workdir=runs/b3_g16_lnpn_native \
        --config.dataset.data_dir=TFDS_DIR [--config.dataset.manual_dir=ILSVRC2012_TARS]

Recipe of paper 001 sec. 3.4 (350 epochs, global batch 768 = 32 x 24 accumulation, RMSProp).
Expected: ImageNet top-1 81.3 ± 0.1 % at 300 px with no fine-tuning (paper 001 Table 3, mean ± std of 3 runs); 81.4 ± 0.2 % after the paper's 2-epoch fine-tuning (Table 4).
"""
from efficientnet_ipu.config import paper_config


def get_config():
    return paper_config('b3', 16, 'ln_pn', 'native')
