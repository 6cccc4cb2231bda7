"""B0, group size 1, GN (4 groups), native resolution (train 224 px, evaluate 224 px), ImageNet.

    python -m efficientnet_ipu.main --config=experiments/b0_g1_gn_native.py --workdir=runs/b0_g1_gn_native \
        --config.dataset.data_dir=TFDS_DIR [--config.dataset.manual_dir=ILSVRC2012_TARS]

Recipe of paper 001 sec. 3.4 (350 epochs, global batch 768 = 32 x 24 accumulation, RMSProp).
Expected: ImageNet top-1 76.2 ± 0.1 % at 224 px with no fine-tuning (paper 001 Table 2, mean ± std of 3 runs); 76.4 ± 0.1 % after the paper's 2-epoch fine-tuning (Table 4).
"""
from efficientnet_ipu.config import paper_config


def get_config():
    return paper_config('b0', 1, 'gn', 'native')
