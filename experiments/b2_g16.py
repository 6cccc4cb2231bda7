"""The paper's headline model: B2, group size 16, LN + proxy-normalized activations, native resolution (train 260 px, evaluate 260 px), ImageNet.

    python -m efficientnet_ipu.main --config=experiments/b2_g16.py --workdir=runs/b2_g16 \
        --config.dataset.data_dir=TFDS_DIR [--config.dataset.manual_dir=ILSVRC2012_TARS]

Recipe of paper 001 sec. 3.4 (350 epochs, global batch 768 = 32 x 24 accumulation, RMSProp), then the 2-epoch fine-tuning of the last 2 blocks at 260 px, a sweep of test sizes 260-676 px, and the export of the fine-tuned model.
Expected: ImageNet top-1 79.9 ± 0.1 % at 260 px with no fine-tuning (``eval_results.json``; paper 001 Table 3, mean ± std of 3 runs); 80.0 ± 0.2 % after the fine-tuning (``finetune/r260_b2/eval_results.json``; Table 4, best of 1-3 blocks).
"""
from efficientnet_ipu.config import paper_config


def get_config():
    return paper_config('b2', 16, 'ln_pn', 'native')
