"""Model entries: compiled training and inference steps of whole models, timed side by
side; the optimizer table and the input pipeline."""
import contextlib
import time

from tensorflow import keras
import numpy as np
import tensorflow as tf

from efficientnet_ipu import config as config_lib
from efficientnet_ipu import kernels, optimizers
from efficientnet_ipu.benchmark.timing import (_sync, interleaved_medians, interleaved_times,
                                               median_ci, paired_ratio)


OPTIMIZERS = ("rmsprop", "keras-rmsprop", "sgd")


def make_optimizer(name, batch):
    """The optimizer a benchmarked training step updates the weights with:
    "rmsprop": the training program's, ``optimizers.RMSPropTF1`` with the paper's
    hyperparameters (``config.base_config().train``; rho from ``batch``); "keras-rmsprop":
    Keras' own RMSprop with the same hyperparameters (the same update as separate ops);
    "sgd": Keras' plain SGD.
    The learning rates are tiny: the weights barely move while being timed.

    Raises: ValueError naming the allowed names."""
    rmsprop = dict(learning_rate=1e-6, **optimizers.paper_rmsprop_arguments(
        config_lib.base_config().train, batch))
    if name == "rmsprop":
        return optimizers.RMSPropTF1(**rmsprop)
    if name == "keras-rmsprop":
        return keras.optimizers.RMSprop(**rmsprop)
    if name == "sgd":
        return keras.optimizers.SGD(1e-6)
    raise ValueError("optimizer must be one of %s; got %r" % (", ".join(OPTIMIZERS), name))


class ModelBench:
    """Compiled train / inference steps of one model at a batch and resolution.
    ``trace_context`` (optional): a context-manager factory the steps are traced in (e.g.
    a ``kernels.override``). ``optimizer``: a ``make_optimizer`` name.
    ``gradient_accumulation`` > 1: one training step sums the gradients of that many
    micro-batches of ``batch`` images before one update, with up to
    ``micro_batches_in_flight`` of them computed at the same time, as the training program
    does (``train.Trainer``, ``config.train``); ``images_per_step`` counts them all.

    Raises: ValueError if ``gradient_accumulation`` or ``micro_batches_in_flight`` < 1."""

    def __init__(self, model, batch, resolution, trace_context=None, optimizer="rmsprop",
                 gradient_accumulation=1, micro_batches_in_flight=2):
        for name, value in (("gradient_accumulation", gradient_accumulation),
                            ("micro_batches_in_flight", micro_batches_in_flight)):
            if not (isinstance(value, int) and value >= 1):  # before building anything
                raise ValueError("%s must be an integer >= 1; got %r" % (name, value))
        self.model = model
        self.images = tf.random.uniform([batch, resolution, resolution, 3], 0, 255)
        self.labels = tf.random.uniform([batch], 0, model.outputs[0].shape[-1], tf.int32)
        self.optimizer = make_optimizer(optimizer, batch * gradient_accumulation)
        self.optimizer.build(model.trainable_variables)
        self.gradient_accumulation = gradient_accumulation
        self.micro_batches_in_flight = micro_batches_in_flight
        self.images_per_step = batch * gradient_accumulation
        self.trace_context = trace_context or contextlib.nullcontext
        self.train_step = tf.function(self._train_step)
        self.infer = tf.function(self._infer)

    def _loss_and_gradients(self):
        with tf.GradientTape() as tape:
            out = self.model(self.images, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                self.labels, tf.cast(out, tf.float32), from_logits=True))
        return loss, tape.gradient(loss, self.model.trainable_variables)

    def _train_step(self):
        variables = self.model.trainable_variables
        with self.trace_context():
            if self.gradient_accumulation == 1:
                loss, grads = self._loss_and_gradients()
            else:  # the same micro-batch each time: only the timing matters here
                loss, grads = optimizers.sum_over_micro_batches(
                    lambda i: self._loss_and_gradients(), self.gradient_accumulation,
                    self.micro_batches_in_flight,
                    (tf.constant(0.0), [tf.zeros_like(v) for v in variables]))
            self.optimizer.apply_gradients(zip(grads, variables))
        return loss

    def _infer(self, images):
        with self.trace_context():
            return self.model(images, training=False)


def optimizer_table(model, batch, resolution, rounds, warmup):
    """The training step of ``model`` with each ``OPTIMIZERS`` entry, timed in interleaved
    rounds. Returns one dict per optimizer: ``ms`` (median step time), ``over_sgd_ms``
    (median over rounds of the step time minus SGD's in the same round, and its 95 % CI:
    what the update costs beyond SGD's multiply-and-subtract) and ``vs_keras`` (speed over
    Keras' RMSprop, ``paired_ratio``)."""
    benches = {name: ModelBench(model, batch, resolution, optimizer=name)
               for name in OPTIMIZERS}
    times = interleaved_times({n: (lambda b=b: _sync(b.train_step())) for n, b in
                               benches.items()}, rounds, warmup)
    rows = []
    for name in OPTIMIZERS:
        extra = 1e3 * (np.asarray(times[name]) - np.asarray(times["sgd"]))
        rows.append(dict(optimizer=name, ms=1e3 * float(np.median(times[name])),
                         over_sgd_ms=float(np.median(extra)), over_sgd_ci=median_ci(extra),
                         vs_keras=paired_ratio(times["keras-rmsprop"], times[name])))
    return rows


def keras_applications_model(size, resolution, num_classes=1000):
    """keras.applications' EfficientNet (random weights) at a fixed square resolution."""
    fn = getattr(keras.applications, "EfficientNet" + size.upper())
    return fn(weights=None, input_shape=(resolution, resolution, 3), classes=num_classes,
              classifier_activation=None)


# Model variants of the --compare-* flags: the suffix of the norm's name, and the
# ``kernels.override`` its steps are traced in (the same model and weights).
VARIANT_OVERRIDES = {"/unfolded": dict(fold=False), "/tf-conv": dict(conv="tensorflow"),
                     "/tf-proxy": dict(proxy=False), "/tf-norm": dict(norm_ops=False)}


def variant_context(norm_name):
    """The trace context of a model entry whose norm is named ``norm_name`` (e.g.
    "ln_pn/tf-conv"), or None."""
    for suffix, choices in VARIANT_OVERRIDES.items():
        if str(norm_name).endswith(suffix):
            return lambda choices=choices: kernels.override(**choices)
    return None


def bench_models(models_by_name, batch, args):
    """Training images/s, inference images/s and batch-1 latency (ms) of every model in
    ``models_by_name`` (a dict whose keys start with the resolution in pixels), each
    measured in interleaved rounds across all the models.

    Returns (results, train_times): results[name] is a dict of those metrics (medians);
    train_times[name] the per-round training step times (s), for ``paired_ratio``."""
    benches = {name: ModelBench(m, batch, name[0], trace_context=variant_context(name[-1]),
        optimizer=args.optimizer, gradient_accumulation=args.gradient_accumulation,
        micro_batches_in_flight=(1 if str(name[-1]).endswith("/1-in-flight")
                                 else args.micro_batches_in_flight))
        for name, m in models_by_name.items()}
    results = {name: {} for name in benches}
    train_times = {}
    if "train" in args.modes:
        train_times = interleaved_times(
            {n: (lambda b=b: _sync(b.train_step())) for n, b in benches.items()},
            args.steps, args.warmup)
        for name, seconds in train_times.items():
            results[name]["train_img_s"] = (benches[name].images_per_step
                                            / float(np.median(seconds)))
    if "inference" in args.modes:
        times = interleaved_medians(
            {n: (lambda b=b: _sync(b.infer(b.images))) for n, b in benches.items()},
            args.steps, args.warmup)
        for name, seconds in times.items():
            results[name]["infer_img_s"] = batch / seconds
        times = interleaved_medians(
            {n: (lambda b=b: _sync(b.infer(b.images[:1]))) for n, b in benches.items()},
            args.steps * 2, args.warmup)
        for name, seconds in times.items():
            results[name]["latency_ms"] = 1e3 * seconds
    return results, train_times


def pipeline_images_per_second(dataset_name, split, size, batch, steps, mixup, cutmix):
    """Training input pipeline throughput (images/s, all cores): decode, random-resized
    crop, flip, resize to ``size`` and Mixup/CutMix, as ``data.train_dataset`` runs it."""
    from efficientnet_ipu import config as config_lib, data
    c = config_lib.base_config()
    c.dataset.name = dataset_name
    c.dataset.train_split = c.dataset.eval_split = split
    c.image_size.train = size
    c.augment.mixup_alpha, c.augment.cutmix_lambda = mixup, cutmix
    c.train.micro_batch_size, c.train.gradient_accumulation = batch, 1
    source = data.open_source(c.dataset)
    ds = data.train_dataset(source, c, epoch=0).repeat()
    iterator = iter(ds)
    for _ in range(3):
        next(iterator)
    tic = time.perf_counter()
    for _ in range(steps):
        next(iterator)[0].numpy()
    return steps * batch / (time.perf_counter() - tic)
