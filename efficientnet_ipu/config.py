"""Training configuration: the defaults (paper 001 sec. 3.4) and their validation.

Experiment files in ``experiments/`` call ``paper_config`` or ``base_config`` and return an
``ml_collections.ConfigDict``; ``main`` reads them with ``config_flags.DEFINE_config_file``
so any field can be overridden (``--config.train.epochs=2``) and an unknown field is an
error (the dicts are locked).
"""
import math
import numbers

import ml_collections

from efficientnet_ipu import models, pipeline
from efficientnet_ipu.kernels.settings import MODES as KERNEL_MODES
from efficientnet_ipu.layers import GROUP_RULES, NORMS
from efficientnet_ipu.layers.proxy_norm import ACTIVATIONS

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu", "ipu")
CUTMIX_SAMPLING = ("graphcore_v1", "fixed")
LR_DECAY_FROM = ("step0", "warmup_end")              # train.WarmupStaircaseDecay
WEIGHT_DECAY_FILTERS = ("graphcore", "paper_text")   # train.decayed_variables
NORM_GROUPINGS = ("contiguous", "strided")           # layers.GroupNormalization
PRECISIONS = ("fp32", "fp16", "bf16")
NONFINITE = ("stop", "skip")                         # train.Trainer
FINETUNE_BLOCKS = (1, 2, 3)                          # finetune.TRAINED_LAYERS
SWEEP_WEIGHTS = ("last", "averaged", "finetuned")    # workdir.find_weights
# Paper 001 (Graphcore's code): Mixup alpha and CutMix lambda per size (0 = off).
MIXUP_ALPHA = {"b0": 0.1, "b1": 0.1, "b2": 0.1, "b3": 0.2, "b4": 0.2, "b5": 0.2}
CUTMIX_LAMBDA = {"b0": 0.0, "b1": 0.95, "b2": 0.9, "b3": 0.9, "b4": 0.85, "b5": 0.8}


def base_config():
    """All fields with their defaults (paper 001 sec. 3.4 recipe, ImageNet, B0-G16-LN+PN)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = dict(size="b0", group_size=16, expansion_ratio=0, norm="ln_pn", norm_groups=4,
                   # GN's channel groups: "contiguous" or "strided" (Graphcore's IPU GN)
                   norm_grouping="contiguous",
                   # where G does not divide a layer's channels: "graphcore" (max(C // G, 1)
                   # groups, Graphcore's code) or "nearest_divisor" (paper 001's footnote),
                   # see layers.group_channels
                   group_rule="graphcore",
                   dropout_rate=-1.0, drop_connect_rate=0.2, activation="swish",
                   # "auto": this project's CPU kernels where they apply; "tensorflow":
                   # TensorFlow's ops only (efficientnet_ipu.kernels). Same function.
                   kernels="auto")
    # train_examples > 0: train on only the first N examples. An undecodable image is
    # skipped, counted and named in a warning; strict=True stops at the first one instead.
    c.dataset = dict(name="imagenet2012", data_dir="", manual_dir="", train_split="train",
                     eval_split="validation", num_classes=0, train_examples=0, strict=False)
    c.image_size = dict(train=224, eval=224)
    # Random-resized crop as Graphcore's preprocessing (min_object_covered 0.1, 100
    # attempts); Mixup per example; CutMix as Graphcore's "version 1" (cutmix_sampling
    # "graphcore_v1": per batch, no cut with probability 1.55 lambda - 0.96, else a kept
    # area of 1 + ln(u) / 4) or a fixed kept area lambda ("fixed").
    c.augment = dict(min_area=0.05, max_area=1.0, min_aspect=0.75, max_aspect=4.0 / 3.0,
                     min_object_covered=0.1, crop_attempts=100, flip=True, mixup_alpha=0.0,
                     cutmix_lambda=0.0, cutmix_sampling="graphcore_v1")
    c.train = dict(
        # global batch = micro_batch_size x gradient_accumulation x replicas (768 in paper 001)
        epochs=350, micro_batch_size=32, gradient_accumulation=24,
        # micro-batches of one step whose forward and backward passes may run at the same
        # time (the accumulation loop's parallel_iterations): overlapping them fills the
        # cores that one micro-batch's chain of small ops leaves idle; each one in flight
        # holds its own activations (about 1 GiB for B0 at 224 px, micro-batch 32)
        micro_batches_in_flight=2,
        steps_per_epoch=0,              # 0: one pass over the training split
        eval_steps=0,                   # 0: the whole eval split
        base_learning_rate=2.0 ** -14,  # lr = base x global batch (paper 001 sec. 3.4)
        warmup_epochs=5.0, lr_decay=0.97, lr_decay_epochs=2.4, momentum=0.9,
        # the x lr_decay steps count from "step0" (Graphcore's code) or "warmup_end"
        lr_decay_from="step0",
        # which variables weight decay applies to: "graphcore" (all but the norms' and
        # PN's beta/gamma) or "paper_text" (conv kernels and PN's proxy parameters)
        weight_decay_filter="graphcore",
        rmsprop_decay_per_example=2.0 ** -14,  # rho = 1 - this x global batch
        rmsprop_epsilon=1e-3,           # inside the square root, as TF1's RMSProp
        weight_decay=1e-5, label_smoothing=0.1,
        # "fp32" on CPUs (they gain nothing from float16); the paper configs say "fp16":
        # float16 compute, float32 master weights and optimizer state, norm and proxy-norm
        # statistics in float32, and loss_scale: a static scale (a number, 128 as the
        # paper) or "dynamic" (Keras' LossScaleOptimizer)
        precision="fp32", loss_scale="128",
        checkpoint_every_steps=0, keep_checkpoints=3, log_every_steps=50,
        # a step whose loss or gradients are not finite: "stop" (an error naming the step;
        # no checkpoint or export from the bad weights) or "skip" (that step changes no
        # weight and no optimizer state; the run goes on and counts it)
        nonfinite="stop")
    # Final weights: the exponential average of the per-epoch weights (paper 001 sec. 3.4,
    # decay 0.97; efficientnet_ipu.average), used by the end-of-run evaluation and the
    # export; keep_epoch_weights writes each epoch's weights (no optimizer state) so that
    # ``python -m efficientnet_ipu.average`` can recompute it with another decay.
    c.average = dict(enabled=True, decay=0.97, keep_epoch_weights=False)
    # Fine-tuning at the test size after training (paper 001 sec. 3.3-3.4,
    # efficientnet_ipu.finetune): image_size 0 = image_size.eval; blocks 1 (top: head conv,
    # its norm, classifier), 2 (and stage 7) or 3 (and stage 6); global batch 512 =
    # micro_batch_size x gradient_accumulation x replicas; vanilla SGD (momentum 0) with a
    # cosine lr from base_learning_rate x global batch (2^-11 x 512 = 0.25) to 0.
    c.finetune = dict(enabled=False, image_size=0, blocks=1, epochs=2, micro_batch_size=32,
                      gradient_accumulation=16, base_learning_rate=2.0 ** -11, momentum=0.0,
                      weight_decay=0.0, label_smoothing=0.1, steps_per_epoch=0)
    # Test-size sweep after training and fine-tuning (efficientnet_ipu.evaluate, paper 001
    # Figure 3): image_sizes "" (off), "128,160,192" or "low:high:step" (pixels); weights
    # "all" (last, averaged and every fine-tune) or a list such as "averaged,finetuned".
    c.sweep = dict(image_sizes="", weights="all")
    # IPUs (efficientnet_ipu.ipu; paper 001 sec. 3.4): ipus_per_replica pipeline stages,
    # cut at pipeline_splits ("" = the paper's splits where Graphcore published them, else
    # balanced by pipeline_cost; or block names such as "block3b"); the IPUConfig options.
    c.strategy = dict(name="auto", tpu="", ipus_per_replica=1, replicas=1, pipeline_splits="",
                      pipeline_cost="macs", available_memory_proportion=0.6,
                      half_partials=True, stochastic_rounding=True, recomputation=True,
                      fp_exceptions=False)
    # portable=True: TensorFlow's ops only (TensorFlow Serving, anywhere); False: this
    # project's CPU ops, faster on CPU, loaded by efficientnet_ipu.export.load_saved_model
    c.export = dict(enabled=True, portable=True)
    c.lock()
    return c


def paper_config(size, group_size, norm, resolution, dataset="imagenet2012"):
    """A paper 001 run (Tables 2-5): size b0-b5, G, norm "gn" or "ln_pn", resolution
    "native" (Table 1, EfficientNet's) or "half" (Table 1, B2 corrected to 196, see
    ``models.HALF_RESOLUTION``). Evaluation at native size. The recipe is ``base_config``'s
    (paper 001 sec. 3.4 as Graphcore's code ran it) in fp16 with a static loss scale of
    128, with Mixup and CutMix per size (``MIXUP_ALPHA``, ``CUTMIX_LAMBDA``). After
    training, the whole method: the averaged weights fine-tuned at the native size (last 2
    blocks, sec. 3.4; Tables 4-5 report the best of 1, 2 and 3 blocks, which
    ``python -m efficientnet_ipu.finetune --blocks=1,2,3`` runs), a sweep of the test sizes
    with the training size's residue mod 32, and the export of the fine-tuned model."""
    models.check_size(size)
    if resolution not in ("native", "half"):
        raise ValueError("resolution must be 'native' or 'half', got %r" % (resolution,))
    c = base_config()
    c.model.size = size
    c.model.group_size = group_size
    c.model.norm = norm
    native = models.SIZES[size][2]
    c.image_size.train = native if resolution == "native" else models.HALF_RESOLUTION[size]
    c.image_size.eval = native
    c.train.precision = "fp16"        # the paper's (on IPUs); fp32 is faster on CPUs
    c.average.keep_epoch_weights = True
    c.augment.mixup_alpha = MIXUP_ALPHA[size]
    c.augment.cutmix_lambda = CUTMIX_LAMBDA[size]
    c.dataset.name = dataset
    # Then the rest of the method (sec. 3.3-3.4, Tables 4-5): fine-tune the last 2 blocks at
    # the native size, and sweep test sizes from the training size up to 700 px (sec. 3.3;
    # Table 5's best sizes reach 680).
    c.finetune.enabled = True
    c.finetune.blocks = 2
    c.sweep.image_sizes = "%d:700:32" % c.image_size.train
    c.sweep.weights = "averaged,finetuned"
    return c


MAX_PEAK_LR = 10.0       # lr = base_learning_rate x global batch
MAX_EXPANSION = 16       # paper 001 Table 2 uses 2-6; far larger ones exhaust memory
MAX_LOSS_SCALE = 2.0 ** 24


def _number(value):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _validate_ranges(config, fail):
    """The numeric ranges and cross-field conditions of ``validate``."""
    m, t, a = config.model, config.train, config.augment

    def check(field, value, ok, allowed):
        if not ok(value):
            fail(field, allowed, value)

    check("model.norm_groups", m.norm_groups, _positive_int, "a positive integer")
    check("model.dropout_rate", m.dropout_rate,
          lambda v: _number(v) and (v == -1 or 0 <= v < 1), "-1 (the size's) or in [0, 1)")
    check("model.drop_connect_rate", m.drop_connect_rate, lambda v: _number(v) and 0 <= v < 1,
          "in [0, 1)")
    if m.activation not in ACTIVATIONS:
        fail("model.activation", "one of %s" % sorted(ACTIVATIONS), m.activation)
    for field in ("steps_per_epoch", "eval_steps", "checkpoint_every_steps"):
        check("train." + field, t[field], lambda v: _int(v) and v >= 0,
              "an integer >= 0 (0 = %s)" % ("off" if field == "checkpoint_every_steps"
                                            else "one pass"))
    check("train.keep_checkpoints", t.keep_checkpoints, _positive_int, "a positive integer")
    check("train.log_every_steps", t.log_every_steps, _positive_int, "a positive integer")
    global_batch = t.micro_batch_size * t.gradient_accumulation * max(
        config.strategy.replicas, 1)
    check("train.base_learning_rate", t.base_learning_rate,
          lambda v: _number(v) and 0 < v * global_batch <= MAX_PEAK_LR,
          "> 0 with base x global batch (%d) <= %g" % (global_batch, MAX_PEAK_LR))
    check("train.warmup_epochs", t.warmup_epochs, lambda v: _number(v) and v >= 0, ">= 0")
    check("train.lr_decay", t.lr_decay, lambda v: _number(v) and 0 < v <= 1, "in (0, 1]")
    check("train.lr_decay_epochs", t.lr_decay_epochs, lambda v: _number(v) and v > 0, "> 0")
    check("train.momentum", t.momentum, lambda v: _number(v) and 0 <= v < 1, "in [0, 1)")
    check("train.rmsprop_decay_per_example", t.rmsprop_decay_per_example,
          lambda v: _number(v) and 0 < v * global_batch <= 1,
          "> 0 with this x global batch (%d) <= 1, so that RMSProp's decay rho = 1 - it is "
          "in [0, 1)" % global_batch)
    check("train.rmsprop_epsilon", t.rmsprop_epsilon, lambda v: _number(v) and v > 0, "> 0")
    check("train.weight_decay", t.weight_decay, lambda v: _number(v) and v >= 0, ">= 0")
    check("train.label_smoothing", t.label_smoothing, lambda v: _number(v) and 0 <= v < 1,
          "in [0, 1)")
    if t.loss_scale != "dynamic" and float(t.loss_scale) > MAX_LOSS_SCALE:
        fail("train.loss_scale", "at most 2^24 or 'dynamic'", t.loss_scale)
    for field in ("min_aspect", "max_aspect"):
        check("augment." + field, a[field], lambda v: _number(v) and v > 0, "> 0")
    if a.min_aspect > a.max_aspect:
        fail("augment.min_aspect/max_aspect", "min_aspect <= max_aspect",
             (a.min_aspect, a.max_aspect))
    for field in ("eval_split", "train_split"):
        if not isinstance(config.dataset[field], str) or not config.dataset[field]:
            fail("dataset." + field, "a split name", config.dataset[field])
    check("strategy.replicas", config.strategy.replicas, _positive_int, "a positive integer")
    check("strategy.ipus_per_replica", config.strategy.ipus_per_replica, _positive_int,
          "a positive integer")
    st = config.strategy
    if st.pipeline_cost not in pipeline.COSTS:
        fail("strategy.pipeline_cost", "one of %s" % list(pipeline.COSTS), st.pipeline_cost)
    if not isinstance(st.pipeline_splits, str):
        fail("strategy.pipeline_splits", "a comma-separated list of block names or ''",
             st.pipeline_splits)
    splits = [b for b in st.pipeline_splits.split(",") if b]
    if splits and len(splits) != st.ipus_per_replica - 1:
        fail("strategy.pipeline_splits", "ipus_per_replica - 1 = %d block names"
             % (st.ipus_per_replica - 1), st.pipeline_splits)
    check("strategy.available_memory_proportion", st.available_memory_proportion,
          lambda v: _number(v) and 0 < v <= 1, "in (0, 1]")
    for field in ("half_partials", "stochastic_rounding", "recomputation", "fp_exceptions"):
        check("strategy." + field, st[field], lambda v: isinstance(v, bool), "True or False")


def check_dataset_fits(config, num_train_examples):
    """Raise ValueError naming the fields if one optimizer step's micro-batches need more
    training examples than there are (drop-remainder batching would train 0 steps)."""
    t = config.train
    if t.steps_per_epoch:
        return
    needed = t.micro_batch_size * t.gradient_accumulation
    if num_train_examples < needed:
        raise ValueError(
            "config.train.micro_batch_size x gradient_accumulation = %d examples per step, "
            "but the training split has %d: lower them or set config.train.steps_per_epoch"
            % (needed, num_train_examples))


def _positive_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def validate(config):
    """Check every field a user may get wrong, before any data or model is built.

    Raises:
      ValueError: naming the field (e.g. ``config.image_size.train``) and what is allowed.
    """
    def fail(field, allowed, value):
        raise ValueError("config.%s must be %s, got %r" % (field, allowed, value))

    m = config.model
    if m.size not in models.SIZES:
        fail("model.size", "one of %s" % sorted(models.SIZES), m.size)
    if m.norm not in NORMS:
        fail("model.norm", "one of %s" % list(NORMS), m.norm)
    if not _positive_int(m.group_size):
        fail("model.group_size", "a positive integer", m.group_size)
    if m.kernels not in KERNEL_MODES:
        fail("model.kernels", "one of %s" % list(KERNEL_MODES), m.kernels)
    if m.expansion_ratio == 0:
        try:
            models.default_expansion_ratio(m.group_size)
        except ValueError as error:
            raise ValueError("config.model.expansion_ratio=0 (paper default) %s" % error)
    elif not (_positive_int(m.expansion_ratio) and m.expansion_ratio <= MAX_EXPANSION):
        fail("model.expansion_ratio", "an integer in [1, %d] (0 = paper 001 Table 2)"
             % MAX_EXPANSION, m.expansion_ratio)
    for field in ("train", "eval"):
        if not _positive_int(config.image_size[field]):
            fail("image_size." + field, "a positive integer (pixels)", config.image_size[field])
    t = config.train
    for field in ("epochs", "micro_batch_size", "gradient_accumulation",
                  "micro_batches_in_flight"):
        if not _positive_int(t[field]):
            fail("train." + field, "a positive integer", t[field])
    if t.nonfinite not in NONFINITE:
        fail("train.nonfinite", "one of %s" % list(NONFINITE), t.nonfinite)
    if t.precision not in PRECISIONS:
        fail("train.precision", "one of %s" % list(PRECISIONS), t.precision)
    if t.loss_scale != "dynamic":
        try:
            scale = float(t.loss_scale)
        except (TypeError, ValueError):
            scale = 0.0
        if not (scale > 0 and math.isfinite(scale)):
            fail("train.loss_scale", "a positive number or 'dynamic'", t.loss_scale)
    if config.strategy.name not in STRATEGIES:
        fail("strategy.name", "one of %s" % list(STRATEGIES), config.strategy.name)
    a = config.augment
    if not 0 < a.min_area <= a.max_area <= 1:
        fail("augment.min_area/max_area", "0 < min_area <= max_area <= 1",
             (a.min_area, a.max_area))
    if not 0 <= a.cutmix_lambda < 1:
        fail("augment.cutmix_lambda", "in [0, 1)", a.cutmix_lambda)
    if a.mixup_alpha < 0:
        fail("augment.mixup_alpha", ">= 0", a.mixup_alpha)
    if a.cutmix_sampling not in CUTMIX_SAMPLING:
        fail("augment.cutmix_sampling", "one of %s" % list(CUTMIX_SAMPLING), a.cutmix_sampling)
    if not 0 <= a.min_object_covered <= 1:
        fail("augment.min_object_covered", "in [0, 1]", a.min_object_covered)
    if not _positive_int(a.crop_attempts):
        fail("augment.crop_attempts", "a positive integer", a.crop_attempts)
    if not 0 <= config.average.decay < 1:
        fail("average.decay", "in [0, 1)", config.average.decay)
    if t.lr_decay_from not in LR_DECAY_FROM:
        fail("train.lr_decay_from", "one of %s" % list(LR_DECAY_FROM), t.lr_decay_from)
    if t.weight_decay_filter not in WEIGHT_DECAY_FILTERS:
        fail("train.weight_decay_filter", "one of %s" % list(WEIGHT_DECAY_FILTERS),
             t.weight_decay_filter)
    if m.group_rule not in GROUP_RULES:
        fail("model.group_rule", "one of %s" % list(GROUP_RULES), m.group_rule)
    if m.norm_grouping not in NORM_GROUPINGS:
        fail("model.norm_grouping", "one of %s" % list(NORM_GROUPINGS), m.norm_grouping)
    if config.dataset.train_examples < 0:
        fail("dataset.train_examples", ">= 0 (0 = all)", config.dataset.train_examples)
    if not isinstance(config.dataset.name, str) or not config.dataset.name:
        fail("dataset.name", "a dataset name", config.dataset.name)
    _validate_ranges(config, fail)
    f = config.finetune
    if isinstance(f.image_size, bool) or not isinstance(f.image_size, int) or f.image_size < 0:
        fail("finetune.image_size", "a non-negative integer (pixels; 0 = image_size.eval)",
             f.image_size)
    if f.blocks not in FINETUNE_BLOCKS:
        fail("finetune.blocks", "one of %s" % list(FINETUNE_BLOCKS), f.blocks)
    for field in ("epochs", "micro_batch_size", "gradient_accumulation"):
        if not _positive_int(f[field]):
            fail("finetune." + field, "a positive integer", f[field])
    if not f.base_learning_rate > 0:
        fail("finetune.base_learning_rate", "> 0", f.base_learning_rate)
    if not 0 <= f.momentum < 1:
        fail("finetune.momentum", "in [0, 1)", f.momentum)
    if f.weight_decay < 0:
        fail("finetune.weight_decay", ">= 0", f.weight_decay)
    if not 0 <= f.label_smoothing < 1:
        fail("finetune.label_smoothing", "in [0, 1)", f.label_smoothing)
    if config.sweep.image_sizes:
        try:
            parse_sizes(config.sweep.image_sizes)
        except ValueError as error:
            raise ValueError("config.sweep.image_sizes: %s" % error) from None
    try:
        parse_weights(config.sweep.weights)
    except ValueError as error:
        raise ValueError("config.sweep.weights: %s" % error) from None


def finetune_size(config):
    """The fine-tune size in pixels: ``finetune.image_size``, or ``image_size.eval`` for 0."""
    return config.finetune.image_size or config.image_size.eval


def parse_sizes(text):
    """Image sizes in pixels from "128,160,192" or "low:high:step" (both ends included),
    ascending and without repeats.

    Raises: ValueError saying what is allowed, for anything else or sizes below 1."""
    text = str(text).strip()
    allowed = "'128,160,192' or 'low:high:step' (positive integers, pixels)"
    try:
        if ":" in text:
            low, high, step = (int(p) for p in text.split(":"))
            if step < 1 or low > high:
                raise ValueError
            sizes = list(range(low, high + 1, step))
        else:
            sizes = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError("image sizes must be %s, got %r" % (allowed, text)) from None
    if not sizes or min(sizes) < 1:
        raise ValueError("image sizes must be %s, got %r" % (allowed, text))
    return sorted(set(sizes))


def parse_weights(text):
    """Weight sets from "all" or a comma list of ``SWEEP_WEIGHTS``; "all" gives all three.

    Raises: ValueError naming the allowed values."""
    names = [p.strip() for p in str(text).split(",") if p.strip()]
    if names == ["all"]:
        return list(SWEEP_WEIGHTS)
    if not names or any(n not in SWEEP_WEIGHTS for n in names):
        raise ValueError("weights must be 'all' or a comma list of %s, got %r"
                         % (list(SWEEP_WEIGHTS), text))
    return names


def model_kwargs(config, num_classes):
    """Arguments of ``models.EfficientNet`` from ``config.model``."""
    m = config.model
    return dict(size=m.size, group_size=m.group_size,
                expansion_ratio=m.expansion_ratio or None, norm=m.norm,
                norm_groups=m.norm_groups, norm_grouping=m.norm_grouping,
                group_rule=m.group_rule,
                num_classes=num_classes,
                dropout_rate=None if m.dropout_rate < 0 else m.dropout_rate,
                drop_connect_rate=m.drop_connect_rate, activation=m.activation,
                kernels=m.kernels)


def load_workdir_config(workdir):
    """The config a training workdir ran with: ``base_config()`` with the values of
    ``<workdir>/config.json`` (fields that file lacks keep their defaults), validated.

    Raises: FileNotFoundError naming the file if ``workdir`` holds no config.json;
    ValueError as ``validate``, or for a field of the file this version does not have."""
    import json
    import os
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError("%s is missing: the workdir must be one that "
                                "python -m efficientnet_ipu.main trained in" % path)
    with open(path) as f:
        values = json.load(f)
    config = base_config()

    def merge(target, source, prefix):
        for key, value in source.items():
            if key not in target:
                raise ValueError("%s has the field %s%s, which this version does not know"
                                 % (path, prefix, key))
            if isinstance(target[key], ml_collections.ConfigDict):
                merge(target[key], value, prefix + key + ".")
            else:
                target[key] = type(target[key])(value) if isinstance(target[key], tuple) \
                    else value
    merge(config, values, "")
    validate(config)
    return config
