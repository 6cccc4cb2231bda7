"""Demo: EfficientNet-B0, group size 16, LN + proxy norm, on scikit-learn's real digits.

    python -m efficientnet_ipu.main --config=experiments/demo.py --workdir=/tmp/efficientnet_demo

Needs no download and nothing from ../shared: the 1,797 8x8 handwritten digits ship inside
scikit-learn (1,437 train / 360 validation). Upscaled to 32 px, trained for 15 epochs with
batch 32 and the paper's RMSProp (lr = 2^-16 x batch, a quarter of the paper's). Expected
result: validation top-1 >= 0.95 from the averaged weights (measured 0.989, top-5 1.000; the
live weights 0.981), in about 125 s wall time on 2 CPU cores (AMD EPYC, TF 2.21).
Exports a SavedModel to <workdir>/export/660/.
"""
from efficientnet_ipu.config import base_config


def get_config():
    c = base_config()
    c.model.size = "b0"
    c.model.group_size = 16
    c.model.norm = "ln_pn"
    c.dataset.name = "digits"
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.image_size.train = 32
    c.image_size.eval = 32
    c.augment.flip = False          # mirrored digits are other symbols
    c.augment.min_area = 0.8
    c.augment.mixup_alpha = 0.0
    c.train.epochs = 15
    c.train.micro_batch_size = 32
    c.train.gradient_accumulation = 1
    c.train.rmsprop_decay_per_example = 2.0 ** -8   # rho = 0.875 at batch 32
    # lr 2^-16 x batch: with the paper's RMSProp (epsilon 1e-3 inside the square root)
    # and this short rho, 2^-14 x batch does not learn here (top-1 0.18 after 15 epochs).
    c.train.base_learning_rate = 2.0 ** -16
    c.train.warmup_epochs = 1.0
    c.train.lr_decay = 0.9
    c.train.lr_decay_epochs = 1.0
    c.train.log_every_steps = 10
    # The paper's 0.97 averages over about 33 epochs; over 15 the average of the last few.
    c.average.decay = 0.5
    return c
