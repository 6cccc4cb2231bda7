"""B1, group size 16, GN (4 groups), native resolution (train 240 px, evaluate 240 px), ImageNet.

    python -m efficientnet_ipu.main --config=experiments/b1_g16_gn_native.py --workdir=runs/b1_g16_gn_native \
        --config.dataset.data_dir=TFDS_DIR [--config.dataset.manual_dir=ILSVRC2012_TARS]

Recipe of paper 001 sec. 3.4 (350 epochs, global batch 768 = 32 x 24 accumulation, RMSProp).
Expected: ImageNet top-1 78.3 ± 0.1 % at 240 px with no fine-tuning (paper 001 Table 3, mean ± std of 3 runs); 78.6 ± 0.1 % after the paper's 2-epoch fine-tuning (Table 4).
"""
from efficientnet_ipu.config import paper_config


def get_config():
    return paper_config('b1', 16, 'gn', 'native')
