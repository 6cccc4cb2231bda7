"""Throughput and latency benchmark, run side by side in one process.

    python -m efficientnet_ipu.benchmark --sizes=b0 --group-sizes=1,16 --norms=bn,ln_pn \
        --resolutions=224,160 --batch=32 --csv=benchmark.csv
    python -m efficientnet_ipu.benchmark --conv          # GroupConv2D vs dense convolution
    python -m efficientnet_ipu.benchmark --layers --group-sizes=1 --steps=20
                                                         # each layer: ours vs TensorFlow's
    python -m efficientnet_ipu.benchmark --layers --group-sizes=16 --kernel-variants
                                         # ... and auto's kernels vs their AVX-512 direct
                                         # and AVX2 blocks (a new CPU's check of auto)
    python -m efficientnet_ipu.benchmark --optimizers --group-sizes=16 --norms=gn \
        --resolutions=32 --steps=30                      # the optimizer update's cost
    python -m efficientnet_ipu.benchmark --pipeline=image_folder:../shared/data/imagenette2_224 \
        --pipeline-split=val                             # input pipeline images/s
    python -m efficientnet_ipu.benchmark --pool-rounds=a_rounds.csv,b_rounds.csv
                                         # the model targets of several runs' rounds pooled

For every (size, G, norm, resolution) it prints and writes to CSV: training images/s
(forward + backward + optimizer update: ``--optimizer``, by default the training
program's RMSProp), inference images/s, batch-1 latency (ms), MACs per image,
achieved GFLOP/s (2 FLOPs per MAC; training counts 3x the forward MACs) and that as a
fraction of the dense 3x3 convolution peak measured in the same run, and the ratios to
keras.applications' EfficientNet of the same size at the same batch and resolution.
Times are medians over ``--steps`` timed calls after ``--warmup`` untimed ones; all the
models of one size and resolution (keras.applications' included) and all the convolution
and normalization variants are timed in interleaved rounds, so that the load of this shared
machine affects the entries of one table alike and their ratios are meaningful.

It ends with issue #4's speed targets (``target_rows``): each is the median over rounds of
the ratio of two entries timed in the same round, with its 95 % confidence interval
(``median_ci``) and the interquartile range of single rounds, judged "yes" or "no" when
the whole interval meets or misses the goal and "within noise" when it straddles it,
and written to ``<csv>_targets.csv``. Every round's training step times go to
``<csv>_rounds.csv`` (``round_rows``); ``--pool-rounds`` recomputes the model targets from
several runs' rounds together (``pooled_round_times``), each round still paired with the
entries timed beside it.
"""
import argparse
import contextlib
import csv
import math
import os
import sys
import time
from unittest import mock

import efficientnet_ipu  # noqa: F401  (before TensorFlow: enables oneDNN)
from tensorflow import keras
import numpy as np
import tensorflow as tf

from efficientnet_ipu import analysis, models, optimizers
from efficientnet_ipu import config as config_lib
from efficientnet_ipu import layers as L

CONV_SHAPE = (32, 28, 28, 240)  # the reference tensor: 3x3, group size 16


def _sync(result):
    """Force the computation (eager results may be lazy on some devices)."""
    for t in tf.nest.flatten(result):
        t.numpy()


def interleaved_times(fns, rounds, warmup):
    """Wall times (s, one per round) of each zero-argument callable in ``fns`` (a dict),
    timed in ``rounds`` interleaved rounds (one call of each per round, after ``warmup``
    untimed calls each), so that changes in machine load affect every entry alike and
    the times of one round can be compared pairwise (``paired_ratio``). Each round runs
    the entries in a new random order (seeded, so runs repeat), so that no entry always
    runs first or always after the same neighbour: with a rotation of one fixed order
    (until session 17) the entry after oneDNN's grouped convolution in the conv table ran
    1.5 points of dense's speed slower than the same kernels placed elsewhere (issue #4)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in names}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for name in [names[j] for j in order.permutation(len(names))]:
            tic = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - tic)
    return times


def interleaved_medians(fns, rounds, warmup):
    """Median wall time (s) of each callable, timed as ``interleaved_times`` does."""
    return {name: float(np.median(t))
            for name, t in interleaved_times(fns, rounds, warmup).items()}


def median_ci(values, confidence=0.95):
    """Distribution-free confidence interval (low, high) of the median of ``values``: the
    order statistics x_(j) <= x_(n+1-j) with the largest j such that
    P(j <= B < n + 1 - j) >= ``confidence`` for B ~ Binomial(n, 1/2) (the sign-test
    interval; e.g. Conover, Practical Nonparametric Statistics, sec. 3.2). With fewer than
    6 values no interval reaches 95 %, and (min, max) is returned."""
    x = np.sort(np.asarray(values, np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    # The interval [x_(j), x_(n+1-j)] covers the median with probability 1 - 2 P(B < j).
    j, tail = 1, (1 + n) / 2 ** n  # j = 1 is the full range; tail = P(B < j + 1)
    while j + 1 <= n // 2 and 1 - 2 * tail >= confidence:
        j, tail = j + 1, tail + math.comb(n, j + 1) / 2 ** n
    return float(x[j - 1]), float(x[n - j])


def paired_ratio(numerator, denominator):
    """(median, 25th, 75th percentile, 95 % CI low, CI high) over rounds of
    numerator[i] / denominator[i], for two lists of per-round times from the same
    ``interleaved_times`` call. A speed ratio of A over B is
    ``paired_ratio(times_B, times_A)``. Pairing by round cancels the load drift that both
    entries of a round share; the quartiles show the noise left in single rounds, and
    the confidence interval (``median_ci``) how well the rounds pin down the median."""
    ratios = np.asarray(numerator, np.float64) / np.asarray(denominator, np.float64)
    return (tuple(float(v) for v in np.percentile(ratios, [50, 25, 75]))
            + median_ci(ratios))


def fwd_bwd_step(fn, x):
    """A compiled forward + backward of ``fn`` (a layer, or a callable whose default
    arguments may hold layers) on the tensor ``x`` (NHWC, float32), with a fixed random
    output gradient u: the gradients with respect to x and to the trainable variables of
    ``fn`` and of the layers in its default arguments.

    Returns ``run`` (with attributes ``x``, ``upstream`` (u), ``variables`` and ``step``,
    the compiled tf.function): calling it runs the forward y = fn(x) and the gradients of
    sum(y * u) to completion and returns the first element of y and of each gradient
    (NumPy scalars). ``run.outputs()`` returns the same step's results in full:
    [y, dx, dvariables...] as NumPy arrays.

    What is timed is fn's own passes. u goes in as the tape's output gradient, so no
    elementwise loss (y * u, and its gradient) runs, and only one element of each result
    is copied out, because the ops compute every result in full anyway (issue #4,
    sessions 12 and 13). Both costs are the same memory passes for every entry of a table,
    so they dilute the gaps between the entries: on [32, 28, 28, 240] they took 7-8 ms of
    a G16 convolution's 33-35 ms per step.
    The forward's first element is returned so that TensorFlow cannot prune it: until
    session 11 the conv table returned only the gradients of sum(y), whose output gradient
    does not need y, and timed the two backward passes alone."""
    upstream = tf.random.normal(tf.shape(fn(x)))  # builds the layers
    owners = [fn] + list(getattr(fn, "__defaults__", None) or ())
    variables = [v for obj in owners for v in getattr(obj, "trainable_variables", [])]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        grads = tape.gradient(y, [x] + variables, output_gradients=upstream)
        return [y] + grads

    @tf.function
    def first_elements():
        return [tf.reshape(t, [-1])[0] for t in step()]

    def run():
        return [t.numpy() for t in first_elements()]
    run.outputs = lambda: [t.numpy() for t in step()]
    run.x, run.upstream, run.variables, run.step = x, upstream, variables, step
    return run


def conv_fwd_bwd_step(layer, shape):
    """``fwd_bwd_step`` of the conv layer ``layer`` on a random ``shape`` input (NHWC)."""
    return fwd_bwd_step(layer, tf.random.normal(shape))


def conv_macs(layer, shape):
    """MACs of one call of a conv layer on ``shape`` (output pixels x kernel size)."""
    out = layer.compute_output_shape(shape)
    return int(np.prod(out[:3])) * int(np.prod(layer.kernel.shape if hasattr(layer, "kernel")
                                               else layer.depthwise_kernel.shape))


def conv_table(steps, warmup, shape=CONV_SHAPE):
    """Rows comparing grouped-convolution implementations with the dense convolution, all
    timed in the same interleaved rounds; the first row (dense) is the peak GFLOP/s.

    Each row: case, ms (median), gflops (at the median), of_dense (median over rounds of
    its GFLOP/s over dense's in the same round), of_dense_iqr (25th, 75th percentile) and
    of_dense_ci (95 % confidence interval of the median, ``median_ci``)."""
    c = shape[-1]
    cases = [
        ("dense Conv2D", keras.layers.Conv2D(c, 3, padding="same", use_bias=False)),
        ("GroupConv2D G16 grouped", L.GroupConv2D(c, 3, group_size=16,
                                                  implementation="grouped")),
        ("GroupConv2D G16 split", L.GroupConv2D(c, 3, group_size=16, implementation="split")),
        ("GroupConv2D G16 avx2", L.GroupConv2D(c, 3, group_size=16, implementation="avx2")),
        ("GroupConv2D G16 tensorflow", L.GroupConv2D(c, 3, group_size=16,
                                                     implementation="tensorflow")),
        ("GroupConv2D G16 auto (default)", L.GroupConv2D(c, 3, group_size=16)),
        ("GroupConv2D G1 tensorflow", L.GroupConv2D(c, 3, group_size=1,
                                                    implementation="tensorflow")),
        ("GroupConv2D G1 auto (default)", L.GroupConv2D(c, 3, group_size=1)),
    ]
    times = interleaved_times({name: conv_fwd_bwd_step(layer, shape)
                               for name, layer in cases}, steps, warmup)
    dense_name, dense_layer = cases[0]
    rows = []
    for name, layer in cases:
        seconds = float(np.median(times[name]))
        # Per FLOP, this case's speed over dense's, paired by round.
        flop_ratio = conv_macs(layer, shape) / conv_macs(dense_layer, shape)
        of_dense = [r * flop_ratio for r in paired_ratio(times[dense_name], times[name])]
        rows.append(dict(case=name, ms=1e3 * seconds,
                         gflops=3 * 2 * conv_macs(layer, shape) / seconds / 1e9,
                         of_dense=of_dense[0], of_dense_iqr=tuple(of_dense[1:3]),
                         of_dense_ci=tuple(of_dense[3:])))
    return rows


def reshape_moments_group_norm(x, groups, epsilon=1e-3):
    """The straightforward Group Norm (reshape to [N, H, W, G, C/G], tf.nn.moments over
    H, W, C/G): the baseline our GroupNormalization is measured against."""
    shape = tf.shape(x)
    c = x.shape[-1]
    grouped = tf.reshape(x, tf.concat([shape[:3], [groups, c // groups]], 0))
    mean, variance = tf.nn.moments(grouped, axes=[1, 2, 4], keepdims=True)
    return tf.reshape((grouped - mean) * tf.math.rsqrt(variance + epsilon), shape)


def norm_table(steps, shape=(32, 56, 56, 96)):
    """Forward + backward wall times (s per round, ``_fwd_bwd_table``) of
    normalization(+activation) variants on ``shape`` (NHWC), measured in interleaved
    rounds so that machine load affects them alike."""
    cases = {
        "GN4 reshape+moments (baseline)": lambda v: reshape_moments_group_norm(v, 4),
        "GN4 ours": L.GroupNormalization(4, center=False, scale=False),
        "GN4 + affine + swish": lambda v, n=L.GroupNormalization(4): tf.nn.silu(n(v)),
        "LN + ProxyNormActivation": lambda v, n=L.LayerNormalization(center=False, scale=False),
        p=L.ProxyNormActivation(): p(n(v)),
        "LN+PN fused (NormActivation)": lambda v, f=L.NormActivation("ln_pn"): f(v),
        "tf.nn.silu (TensorFlow's gradient)": tf.nn.silu,
        "swish (ours, cheaper gradient)": L.proxy_norm.swish,
    }
    return _fwd_bwd_table(cases, shape, steps)


def block_table(steps, shape=(32, 56, 56, 24), group_size=16, expand_ratio=4):
    """Forward + backward wall times (s per round, ``_fwd_bwd_table``) of one MBConv
    block (B0's block2b at 224 px: 24 -> 24 channels, expanded E times, 3x3 group conv
    of group size G) with GN, BN, and LN+PN with and without the proxy-norm folding
    (``MBConvBlock``'s default, "auto", folds only where the group convolution runs on
    our "avx2" ops), in interleaved rounds."""
    def block(norm, fold=True):
        return L.MBConvBlock(shape[-1], shape[-1], 3, 1, expand_ratio, group_size, norm=norm,
                             fold_proxy_norm=fold, name="block2b")
    cases = {
        "MBConv GN": block("gn"),
        "MBConv LN+PN folded": block("ln_pn"),
        "MBConv LN+PN unfolded": block("ln_pn", fold=False),
        "MBConv BN": block("bn"),
    }
    return _fwd_bwd_table(cases, shape, steps)


def _fwd_bwd_table(cases, shape, steps):
    """Wall times (s, one per round) of forward + backward (input and weight gradients,
    ``fwd_bwd_step``) of each callable or layer in ``cases`` on a random ``shape`` input
    (NHWC, float32), in ``steps`` interleaved rounds (``interleaved_times``). Until
    session 12 this step took the gradients of sum(sin(f(x))) and copied every gradient
    out: on [32, 56, 56, 96] a sine, a cosine and a 38 MB copy per step, the same for every
    entry, which diluted the differences between them."""
    x = tf.random.normal(shape)
    return interleaved_times({name: fwd_bwd_step(fn, x) for name, fn in cases.items()},
                             steps, 1)


OPTIMIZERS = ("rmsprop", "keras-rmsprop", "sgd")


def make_optimizer(name, batch):
    """The optimizer a benchmarked training step updates the weights with:
    "rmsprop": the training program's, ``optimizers.RMSPropTF1`` with the paper's
    hyperparameters (``config.base_config().train``; rho from ``batch``); "keras-rmsprop":
    Keras' own RMSprop with the same hyperparameters (the same update as separate ops);
    "sgd": Keras' plain SGD (what sessions 1-9 of issue #4 timed).
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
    ``norm.tensorflow_norm_ops``). ``optimizer``: a ``make_optimizer`` name.
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


def bench_models(models_by_name, batch, args):
    """Training images/s, inference images/s and batch-1 latency (ms) of every model in
    ``models_by_name`` (a dict whose keys start with the resolution in pixels), each
    measured in interleaved rounds across all the models.

    Returns (results, train_times): results[name] is a dict of those metrics (medians);
    train_times[name] the per-round training step times (s), for ``paired_ratio``."""
    benches = {name: ModelBench(m, batch, name[0], trace_context=(
        L.norm.tensorflow_norm_ops if str(name[-1]).endswith("/tf-norm") else None),
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


def _target(target, stats, goal, at_most=False):
    """One targets-table row from (median, q25, q75, ci_low, ci_high) (``paired_ratio``):
    met is "yes" when the whole 95 % confidence interval of the median meets the goal,
    "no" when the whole interval misses it, else "within noise". Costs (``at_most``) must
    be at most the goal, speeds at least. The quartiles are reported as the spread of
    single rounds."""
    value, q25, q75, low, high = stats
    if at_most:
        met = "yes" if high <= goal else "no" if low > goal else "within noise"
    else:
        met = "yes" if low >= goal else "no" if high < goal else "within noise"
    return dict(target=target, value=value, q25=q25, q75=q75, ci_low=low, ci_high=high,
                goal=("<= " if at_most else ">= ") + "%g" % goal, met=met)


def group_conv_layer_shapes(model, resolution, batch):
    """The GroupConv2D layers of ``model`` as ((batch, H, W, C_in) input shape, kernel size,
    stride, group size, filters) with the number of layers of each, in order of first use,
    from one forward pass on a ``resolution`` x ``resolution`` image."""
    counts = {}
    original = L.GroupConv2D.call

    def record(layer, inputs, *args, **kwargs):
        key = ((batch,) + tuple(int(d) for d in inputs.shape[1:]), layer.kernel_size,
               layer.strides, layer.resolved_group_size, layer.filters)
        counts[key] = counts.get(key, 0) + 1
        return original(layer, inputs, *args, **kwargs)
    L.GroupConv2D.call = record
    try:
        model(tf.zeros([1, resolution, resolution, 3]), training=False)
    finally:
        L.GroupConv2D.call = original
    return list(counts.items())


# The CPU op library's kernel variants, selected by environment variables that each op
# reads when TensorFlow constructs its kernel (layers/group_conv16.py): auto's own choice
# (AVX-512 blocks and Winograd F(2x2, 3x3) on AVX-512 CPUs), the direct AVX-512 blocks, and
# the AVX2 blocks. On a CPU without AVX-512 the three are the same kernels.
KERNEL_VARIANTS = {"avx512-direct": {"EFFICIENTNET_IPU_WINOGRAD": "0"},
                   "avx2-blocks": {"EFFICIENTNET_IPU_AVX2_ONLY": "1"},
                   "general-kernel-grad": {"EFFICIENTNET_IPU_PER_GROUP": "0"}}


def layer_table(model, resolution, batch, steps, warmup, kernel_variants=False):
    """Forward + backward of every GroupConv2D layer shape of ``model`` at ``resolution``
    (``group_conv_layer_shapes``), implementation "tensorflow" against "auto" (this
    project's CPU kernels where they apply: G16, and the gradients of G1), the two timed in
    the same interleaved rounds, layer shape by layer shape. With ``kernel_variants``, the
    same rounds also time "auto" built as each ``KERNEL_VARIANTS`` entry (the kernels are
    constructed, by a first call, while that entry's environment is set), to check on a
    new CPU that auto's kernel choice is its fastest.

    The same rounds also time an empty step on the same input (the identity's forward and
    gradient: no op runs), whose median is the call overhead that every entry's wall time
    includes: the tf.function call, the thread hand-offs and the copies out, 0.7-1 ms on
    the 2-core Zen 4 of issue #4, the same at every resolution. Until session 20 the table
    gave the wall times only, and the small layers' overhead made B0-G1's depthwise layers
    look as if they sped up 1.72-1.77x, not 1.84x, from 160 to 224 px.

    Returns a list of dicts: shape, kernel_size, stride, group_size, count (layers of this
    shape), tensorflow_ms, auto_ms (medians of the wall times), overhead_ms (the empty
    step's median), net_tensorflow_ms and net_auto_ms (the medians less overhead_ms),
    speed (auto's speed over tensorflow's in wall time: median, 25th, 75th percentile,
    95 % CI low, high, ``paired_ratio``) and net_speed (net_tensorflow_ms / net_auto_ms);
    with ``kernel_variants`` also variants: {name: (ms, auto's speed over it as
    ``speed``)}."""
    rows = []
    for (shape, k, stride, group_size, filters), count in group_conv_layer_shapes(
            model, resolution, batch):
        x = tf.random.normal(shape)

        def build(impl):
            return fwd_bwd_step(L.GroupConv2D(filters, k, strides=stride,
                                              group_size=group_size, implementation=impl), x)
        steps_by_impl = {impl: build(impl) for impl in ("tensorflow", "auto")}
        steps_by_impl["empty step"] = fwd_bwd_step(tf.identity, x)
        for name, variables in (KERNEL_VARIANTS.items() if kernel_variants else ()):
            with mock.patch.dict(os.environ, variables):  # restored after the block
                steps_by_impl[name] = build("auto")
                steps_by_impl[name]()  # constructs the op kernels under ``variables``
        times = interleaved_times(steps_by_impl, steps, warmup)
        ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
        row = dict(shape=shape, kernel_size=k, stride=stride, group_size=group_size,
                   count=count, tensorflow_ms=ms["tensorflow"], auto_ms=ms["auto"],
                   overhead_ms=ms["empty step"],
                   net_tensorflow_ms=ms["tensorflow"] - ms["empty step"],
                   net_auto_ms=ms["auto"] - ms["empty step"],
                   speed=paired_ratio(times["tensorflow"], times["auto"]))
        row["net_speed"] = row["net_tensorflow_ms"] / row["net_auto_ms"]
        if kernel_variants:
            row["variants"] = {name: (1e3 * float(np.median(times[name])),
                                      paired_ratio(times[name], times["auto"]))
                               for name in KERNEL_VARIANTS}
        rows.append(row)
    return rows


def conv_target_rows(conv_rows):
    """The GroupConv2D G16 target (>= 75 % of the dense conv's GFLOP/s), one row per G16
    implementation of ``conv_table``'s rows (see ``_target`` for the row's fields)."""
    return [_target("%s vs dense conv, GFLOP/s" % row["case"],
                    (row["of_dense"],) + tuple(row["of_dense_iqr"]) + tuple(row["of_dense_ci"]),
                    0.75)
            for row in conv_rows[1:] if "G16" in row["case"]]


def _model_label(model):
    """"keras" or e.g. "G16-gn" for a ``bench_models`` key without its resolution."""
    return "keras" if model == ("keras",) else "G%d-%s" % model


def target_rows(size, resolutions, train_times):
    """The issue's model speed targets from one size's interleaved training times.

    Args:
      size: "b0".."b7"; resolutions: the pixel sizes timed (native and half are matched
        with ``models.SIZES`` / ``models.HALF_RESOLUTION``); train_times: from
        ``bench_models``, keyed (resolution, "keras") or (resolution, G, norm).

    Returns:
      list of dicts (``_target``): target, value (median over rounds of the paired
      ratio), q25, q75, ci_low, ci_high, goal, met. Costs are ratio - 1.
    """
    rows = []

    def add(target, stats, goal, at_most=False):
        rows.append(_target(target, stats, goal, at_most))

    def speed(fast, slow):  # speed of ``fast`` over ``slow``
        return paired_ratio(train_times[slow], train_times[fast])

    for res in resolutions:
        if (res, "keras") in train_times and (res, 1, "bn") in train_times:
            add("G1-BN vs keras %s, %d px" % (size.upper(), res),
                speed((res, 1, "bn"), (res, "keras")), 1.0)
        for norm in ("bn", "gn", "ln_pn"):
            if (res, 1, norm) in train_times and (res, 16, norm) in train_times:
                add("G16 vs G1, %s, %d px" % (norm, res),
                    speed((res, 16, norm), (res, 1, norm)), 1.0)
        if (res, 16, "gn") in train_times and (res, 16, "ln_pn") in train_times:
            cost = paired_ratio(train_times[(res, 16, "ln_pn")], train_times[(res, 16, "gn")])
            add("LN+PN cost over GN, G16, %d px" % res, tuple(c - 1 for c in cost), 0.05,
                at_most=True)
        for g in (1, 16):  # --compare-conv: our kernels vs TensorFlow's
            for norm in ("bn", "gn", "ln_pn"):
                if (res, g, norm + "/tf-conv") in train_times and (res, g, norm) in train_times:
                    add("G%d CPU kernels vs TF convs, %s, %d px" % (g, norm, res),
                        speed((res, g, norm), (res, g, norm + "/tf-conv")), 1.0)
        for g in (1, 16):  # --compare-proxy: the fused proxy statistics vs TensorFlow ops
            for norm in ("gn_pn", "ln_pn"):
                if (res, g, norm + "/tf-proxy") in train_times and (res, g, norm) in train_times:
                    add("fused proxy stats vs TF ops, G%d %s, %d px" % (g, norm, res),
                        speed((res, g, norm), (res, g, norm + "/tf-proxy")), 1.0)
        for key in sorted(k for k in train_times  # --compare-norm-ops: ours vs TF ops
                          if k[0] == res and str(k[-1]).endswith("/tf-norm")):
            base = key[:2] + (key[2][:-len("/tf-norm")],)
            if base in train_times:
                add("fused norm ops vs TF ops, G%d %s, %d px" % (key[1], base[2], res),
                    speed(base, key), 1.0)
        for key in sorted(k for k in train_times  # --compare-in-flight
                          if k[0] == res and str(k[-1]).endswith("/1-in-flight")):
            base = key[:2] + (key[2][:-len("/1-in-flight")],)
            if base in train_times:
                add("micro-batches in flight vs 1, G%d %s, %d px" % (key[1], base[2], res),
                    speed(base, key), 1.0)
    native, half = models.SIZES[size][2], models.HALF_RESOLUTION[size]
    for key in train_times:
        half_key = (half,) + key[1:]
        if key[0] == native and half_key in train_times:
            add("half-res speed-up, %s, %d vs %d px" % (_model_label(key[1:]), half, native),
                speed(half_key, key), 1.9)
    return rows


def fixed_cost_rows(size, train_times):
    """Per-step fixed cost of each model timed at three or more resolutions: a least-squares
    fit, per round, of the training step time t = F + a * pixels (pixels = H * W) across
    the resolutions, as the medians over rounds with 95 % confidence intervals
    (``median_ci``). F is the part of a step that does not shrink with the image (weight
    updates, [N, C] and weight-sized ops, per-op start-up), and it bounds the
    half-resolution speed-up even when all the rest scales with the pixels:
    bound = (F + a * native^2) / (F + a * half^2), with ``models.SIZES`` /
    ``models.HALF_RESOLUTION``'s native and half sizes (issue #4, session 9).

    Args:
      size: "b0".."b7"; train_times: from ``bench_models``, keyed (resolution, ...), each
        a list of per-round step times (s) from one ``interleaved_times`` call.

    Returns:
      list of dicts: model (the key without its resolution), resolutions, fixed_ms (F),
      fixed_ci (low, high), ms_per_kpx (a, ms per 1000 pixels), bound, bound_ci.
    """
    by_model = {}
    for key, times in train_times.items():
        by_model.setdefault(key[1:], {})[key[0]] = np.asarray(times, np.float64)
    native, half = models.SIZES[size][2], models.HALF_RESOLUTION[size]
    rows = []
    for model, by_res in by_model.items():
        if len(by_res) < 3:
            continue
        res = sorted(by_res)
        pixels = np.array([r * r for r in res], np.float64)
        design = np.stack([np.ones_like(pixels), pixels], axis=1)            # [R, 2]
        times = np.stack([by_res[r] for r in res])                           # [R, rounds]
        fixed, slope = np.linalg.lstsq(design, times, rcond=None)[0]         # [rounds] each
        bound = (fixed + slope * native ** 2) / (fixed + slope * half ** 2)
        rows.append(dict(model=model, resolutions=res,
                         fixed_ms=float(np.median(fixed)) * 1e3,
                         fixed_ci=tuple(v * 1e3 for v in median_ci(fixed)),
                         ms_per_kpx=float(np.median(slope)) * 1e6,
                         bound=float(np.median(bound)), bound_ci=median_ci(bound)))
    return rows


def print_targets(targets):
    """Prints ``_target`` rows, one line each: the value, its 95 % CI, the single rounds'
    IQR, the goal and whether it is met."""
    for t in targets:
        print("  %-52s %7.3f  CI [%.3f, %.3f]  IQR [%.3f, %.3f]  goal %-7s met: %s" % (
            t["target"], t["value"], t["ci_low"], t["ci_high"], t["q25"], t["q75"],
            t["goal"], t["met"]))


ROUND_FIELDS = ("size", "G", "norm", "res", "round", "seconds")


def round_rows(size, train_times):
    """One dict per timed round of every model in ``train_times`` (keyed as from
    ``bench_models``): size, G ("" for keras.applications), norm ("keras" for it), res
    (px), round (0-based, in the order timed; entries with the same round number were
    timed in the same round) and seconds (the training step's wall time)."""
    rows = []
    for key, times in train_times.items():
        g, norm = ("", "keras") if key[1:] == ("keras",) else key[1:]
        rows += [dict(size=size, G=g, norm=norm, res=key[0], round=i, seconds=float(t))
                 for i, t in enumerate(times)]
    return rows


def pooled_round_times(paths):
    """Training step times of several runs' ``<csv>_rounds.csv`` files (``round_rows``),
    pooled: {size: {key: seconds}} with keys as ``bench_models``'s, each list the runs'
    rounds one run after another, so that the entries of one round stay paired. Only the
    models timed in every run are kept.

    Raises: ValueError naming the file if one is missing, lacks a column of
    ``ROUND_FIELDS``, or times its models in unequal numbers of rounds."""
    runs = []
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError("--pool-rounds: no such file %r" % path)
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(ROUND_FIELDS) - set(reader.fieldnames or ())
            if missing:
                raise ValueError("--pool-rounds: %s lacks the column(s) %s (expected %s)" % (
                    path, ", ".join(sorted(missing)), ", ".join(ROUND_FIELDS)))
            run = {}
            for row in reader:
                res = int(row["res"])
                key = (res, "keras") if row["norm"] == "keras" else (
                    res, int(row["G"]), row["norm"])
                run.setdefault(row["size"], {}).setdefault(key, {})[int(row["round"])] = (
                    float(row["seconds"]))
        for size, by_key in run.items():
            counts = {len(r) for r in by_key.values()}
            if len(counts) != 1:
                raise ValueError("--pool-rounds: %s times the %s models in unequal numbers "
                                 "of rounds (%s)" % (path, size, sorted(counts)))
        runs.append({size: {key: [r[i] for i in sorted(r)] for key, r in by_key.items()}
                     for size, by_key in run.items()})
    pooled = {}
    for size in set.intersection(*(set(run) for run in runs)):
        keys = set.intersection(*(set(run[size]) for run in runs))
        pooled[size] = {key: [t for run in runs for t in run[size][key]] for key in keys}
    return pooled


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


def parse_list(text, cast=str):
    return [cast(v) for v in text.split(",") if v]


def resolve_resolutions(size, resolutions):
    out = []
    for r in resolutions:
        if r == "native":
            out.append(models.SIZES[size][2])
        elif r == "half":
            out.append(models.HALF_RESOLUTION[size])
        else:
            out.append(int(r))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="b0")
    parser.add_argument("--group-sizes", default="1,16")
    parser.add_argument("--norms", default="bn,gn,ln_pn")
    parser.add_argument("--resolutions", default="native",
                        help="pixels, or 'native'/'half' (paper 001 Table 1)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--modes", default="train,inference")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-keras-baseline", action="store_true")
    parser.add_argument("--compare-unfolded", action="store_true",
                        help="also time each GN/LN/IN+PN model without the proxy-norm "
                             "folding (norm shown as e.g. ln_pn/unfolded)")
    parser.add_argument("--compare-conv", action="store_true",
                        help="also time each G1 and G16 model with conv_implementation="
                             "'tensorflow' (TensorFlow's convolutions and gradients instead "
                             "of the CPU kernels; norm shown as e.g. bn/tf-conv)")
    parser.add_argument("--compare-proxy", action="store_true",
                        help="also time each proxy-norm model with proxy_implementation="
                             "'tensorflow' (the proxy statistics as TensorFlow ops instead of "
                             "the fused CPU op; norm shown as e.g. ln_pn/tf-proxy)")
    parser.add_argument("--compare-norm-ops", action="store_true",
                        help="also time each model with the normalization, statistics and "
                             "squeeze-excite-gate ops of the CPU library traced as "
                             "TensorFlow ops (norm.tensorflow_norm_ops; norm shown as e.g. "
                             "gn/tf-norm)")
    parser.add_argument("--optimizer", default="rmsprop", choices=OPTIMIZERS,
                        help="the update in the timed training step (make_optimizer); "
                             "rmsprop is the training program's")
    parser.add_argument("--gradient-accumulation", type=int, default=1,
                        help="micro-batches of --batch images per training step (one "
                             "optimizer update), as config.train.gradient_accumulation")
    parser.add_argument("--micro-batches-in-flight", type=int,
                        default=config_lib.base_config().train.micro_batches_in_flight,
                        help="micro-batches computed at the same time within a step, as "
                             "config.train.micro_batches_in_flight")
    parser.add_argument("--compare-in-flight", action="store_true",
                        help="with --gradient-accumulation >= 2, also time each model with "
                             "one micro-batch in flight (norm shown as e.g. gn/1-in-flight)")
    parser.add_argument("--optimizers", action="store_true",
                        help="only the optimizer table: the first model's training step "
                             "with each of %s" % ", ".join(OPTIMIZERS))
    parser.add_argument("--conv", action="store_true", help="only the convolution table")
    parser.add_argument("--layers", action="store_true",
                        help="only the per-layer table: forward + backward of each "
                             "GroupConv2D shape of the first size and group size at the "
                             "first resolution, TensorFlow's convolutions against 'auto'")
    parser.add_argument("--kernel-variants", action="store_true",
                        help="with --layers, also time auto's kernels built as their direct "
                             "AVX-512 blocks (no Winograd) and as their AVX2 blocks, in the "
                             "same rounds (KERNEL_VARIANTS)")
    parser.add_argument("--norm-layers", action="store_true",
                        help="only the normalization table (ours vs the baseline)")
    parser.add_argument("--pipeline", default="",
                        help="dataset whose training input pipeline to time, e.g. "
                             "image_folder:../shared/data/imagenette2_224")
    parser.add_argument("--pipeline-split", default="train")
    parser.add_argument("--csv", default="benchmark.csv")
    parser.add_argument("--pool-rounds", default="",
                        help="only the model speed targets of earlier runs' "
                             "<csv>_rounds.csv files (comma-separated), their rounds pooled "
                             "(pooled_round_times); times nothing")
    args = parser.parse_args(argv)
    for flag in ("batch", "gradient_accumulation", "micro_batches_in_flight"):
        if getattr(args, flag) < 1:
            parser.error("--%s must be a positive integer" % flag.replace("_", "-"))
    if args.kernel_variants and not args.layers:
        parser.error("--kernel-variants goes with --layers (it compares the per-layer "
                     "kernels)")
    if args.compare_in_flight and args.gradient_accumulation < 2:
        parser.error("--compare-in-flight needs --gradient-accumulation >= 2 (one micro-batch "
                     "per step has nothing to overlap)")
    sizes = parse_list(args.sizes)
    for size in sizes:
        models.check_size(size)
    norms = parse_list(args.norms)
    for norm in norms:
        L.parse_norm(norm)
    group_sizes = parse_list(args.group_sizes, int)
    if args.pool_rounds:
        try:
            pooled = pooled_round_times(parse_list(args.pool_rounds))
        except ValueError as e:
            parser.error(str(e))
        for size, times in sorted(pooled.items()):
            n_rounds = len(next(iter(times.values()))) if times else 0
            print("%s: %d models, %d rounds pooled from %s" % (
                size.upper(), len(times), n_rounds, args.pool_rounds))
            print_targets(target_rows(size, sorted({key[0] for key in times}), times))
        return 0

    print("TensorFlow %s, Keras %s, %d CPU threads" % (
        tf.__version__, getattr(keras, "__version__", "2"), os.cpu_count()))
    print("Training step: %s update, %d micro-batch(es) of %d per step, up to %d in flight"
          % (args.optimizer, args.gradient_accumulation, args.batch,
             args.micro_batches_in_flight))
    if args.norm_layers:
        for title, table, base in (
                ("Normalization on [32, 56, 56, 96], forward + backward",
                 norm_table(args.steps * 4), "GN4 reshape+moments (baseline)"),
                ("MBConv block on [32, 56, 56, 24], G16, E4, forward + backward",
                 block_table(args.steps * 4), "MBConv LN+PN unfolded")):
            print("%s (medians of %d interleaved rounds; speed over %s's in the same round, "
                  "95 %% CI):" % (title, args.steps * 4, base))
            for name, times in table.items():
                ratio = paired_ratio(table[base], times)
                print("  %-36s %8.2f ms  %5.3fx [%.3f, %.3f]" % (
                    name, 1e3 * np.median(times), ratio[0], ratio[3], ratio[4]))
        return 0
    if args.optimizers:
        size, g, norm = sizes[0], group_sizes[0], norms[0]
        resolution = int(resolve_resolutions(size, [parse_list(args.resolutions)[0]])[0])
        model = models.EfficientNet(size, group_size=g, norm=norm,
                                    input_shape=(resolution, resolution, 3))
        print("Training step of %s-G%d %s at %d px, batch %d, %d variables, by optimizer "
              "(medians of %d interleaved rounds, 95 %% CIs):" % (
                  size.upper(), g, norm, resolution, args.batch,
                  len(model.trainable_variables), args.steps))
        for r in optimizer_table(model, args.batch, resolution, args.steps, args.warmup):
            print("  %-14s %8.1f ms  %+7.1f ms over sgd [%.1f, %.1f]  %5.3fx keras-rmsprop's "
                  "speed [%.3f, %.3f]" % (r["optimizer"], r["ms"], r["over_sgd_ms"],
                                          r["over_sgd_ci"][0], r["over_sgd_ci"][1],
                                          r["vs_keras"][0], r["vs_keras"][3],
                                          r["vs_keras"][4]))
        return 0
    if args.layers:
        size, g = sizes[0], group_sizes[0]
        resolution = int(resolve_resolutions(size, [parse_list(args.resolutions)[0]])[0])
        model = models.EfficientNet(size, group_size=g, norm=norms[0],
                                    input_shape=(resolution, resolution, 3))
        print("GroupConv2D layers of %s-G%d at %d px, batch %d, forward + backward "
              "(medians of %d interleaved rounds, less the empty step's call overhead; "
              "auto's speed over tensorflow's in wall time, 95 %% CI, and net of the "
              "overhead):" % (size.upper(), g, resolution, args.batch, args.steps))
        totals = {"tensorflow": 0.0, "auto": 0.0}
        for r in layer_table(model, resolution, args.batch, args.steps, args.warmup,
                             kernel_variants=args.kernel_variants):
            totals["tensorflow"] += r["count"] * r["net_tensorflow_ms"]
            totals["auto"] += r["count"] * r["net_auto_ms"]
            line = ("  %-20s %dx%d s%d G%-2d x%d  tensorflow %7.2f ms  auto %7.2f ms  "
                    "(overhead %.2f ms)  %5.3fx [%.3f, %.3f], net %5.3fx"
                    % (r["shape"], r["kernel_size"], r["kernel_size"], r["stride"],
                       r["group_size"], r["count"], r["net_tensorflow_ms"], r["net_auto_ms"],
                       r["overhead_ms"], r["speed"][0], r["speed"][3], r["speed"][4],
                       r["net_speed"]))
            for name, (ms, speed) in r.get("variants", {}).items():
                totals[name] = totals.get(name, 0.0) + r["count"] * (ms - r["overhead_ms"])
                line += "  %s %7.2f ms (auto %5.3fx [%.3f, %.3f])" % (
                    name, ms - r["overhead_ms"], speed[0], speed[3], speed[4])
            print(line)
        print("  summed over the layers, net of the overhead: " + ", ".join(
            "%s %.1f ms" % item for item in totals.items()))
        return 0
    if args.pipeline:
        rate = pipeline_images_per_second(args.pipeline, args.pipeline_split,
                                          int(resolve_resolutions(sizes[0], [
                                              parse_list(args.resolutions)[0]])[0]),
                                          args.batch, args.steps * 10, mixup=0.1, cutmix=0.9)
        print("Input pipeline on %s (%s): %.1f images/s on %d cores = %.1f images/s per core"
              % (args.pipeline, args.pipeline_split, rate, os.cpu_count(),
                 rate / os.cpu_count()))
        return 0
    print("Convolution %s, 3x3, forward + backward:" % (CONV_SHAPE,))
    conv_rows = conv_table(args.steps * 2, args.warmup)
    for row in conv_rows:
        print("  %-32s %8.2f ms %7.1f GFLOP/s %6.1f%% of dense (CI %.1f-%.1f%%, IQR "
              "%.1f-%.1f%%)" % (row["case"], row["ms"], row["gflops"], 100 * row["of_dense"],
                                100 * row["of_dense_ci"][0], 100 * row["of_dense_ci"][1],
                                100 * row["of_dense_iqr"][0], 100 * row["of_dense_iqr"][1]))
    if args.conv:
        return 0
    peak = conv_rows[0]["gflops"]
    policy = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
    keras.mixed_precision.set_global_policy(policy[args.precision])
    rows, targets = [], conv_target_rows(conv_rows)
    fixed_costs = []  # fixed_cost_rows of every size
    rounds = []  # round_rows of every size
    header = ("size", "G", "E", "norm", "res", "batch", "train_img_s", "infer_img_s",
              "latency_ms", "macs_m", "train_gflops", "of_peak", "vs_keras_train",
              "vs_keras_infer")
    print("\n" + " ".join("%12s" % h for h in header))
    for size in sizes:
        # Every model of this size at every resolution (and the keras.applications
        # baseline) is timed in the same interleaved rounds, so that their ratios (G16 vs
        # G1, LN+PN vs GN, half vs native resolution, ours vs keras) share the load.
        built = {}
        resolutions = resolve_resolutions(size, parse_list(args.resolutions))
        for resolution in resolutions:
            if not args.no_keras_baseline:
                built[(resolution, "keras")] = keras_applications_model(size, resolution)
            for g in group_sizes:
                for norm in norms:
                    built[(resolution, g, norm)] = models.EfficientNet(
                        size, group_size=g, norm=norm)
                    if args.compare_unfolded and norm.endswith("_pn") and norm != "bn_pn":
                        built[(resolution, g, norm + "/unfolded")] = models.EfficientNet(
                            size, group_size=g, norm=norm, fold_proxy_norm=False)
                    if args.compare_conv and g in (1, 16):  # the kernels serve these
                        built[(resolution, g, norm + "/tf-conv")] = models.EfficientNet(
                            size, group_size=g, norm=norm, conv_implementation="tensorflow")
                    if args.compare_proxy and norm.endswith("_pn"):
                        built[(resolution, g, norm + "/tf-proxy")] = models.EfficientNet(
                            size, group_size=g, norm=norm, proxy_implementation="tensorflow")
                    if args.compare_in_flight:  # same model, one micro-batch in flight
                        built[(resolution, g, norm + "/1-in-flight")] = models.EfficientNet(
                            size, group_size=g, norm=norm)
                    if args.compare_norm_ops:  # same model, traced in tensorflow_norm_ops()
                        built[(resolution, g, norm + "/tf-norm")] = models.EfficientNet(
                            size, group_size=g, norm=norm)
        results, train_times = bench_models(built, args.batch, args)
        targets += target_rows(size, resolutions, train_times)
        fixed_costs += [dict(r, size=size) for r in fixed_cost_rows(size, train_times)]
        rounds += round_rows(size, train_times)
        for resolution in resolutions:
            baseline = results.get((resolution, "keras"), {})
            if baseline:
                print("  keras.applications EfficientNet%s at %d px: %s" % (
                    size.upper(), resolution,
                    ", ".join("%s %.2f" % kv for kv in sorted(baseline.items()))))
            for key, result in results.items():
                if key[0] != resolution or key[1] == "keras":
                    continue
                _, g, norm = key
                macs = analysis.count_macs(built[key], resolution)
                row = dict(size=size, G=g, E=models.default_expansion_ratio(g), norm=norm,
                           res=resolution, batch=args.batch, macs_m=macs / 1e6, **result)
                if "train_img_s" in result:
                    row["train_gflops"] = 3 * 2 * macs * result["train_img_s"] / 1e9
                    row["of_peak"] = row["train_gflops"] / peak
                for mode in ("train", "infer"):
                    metric = mode + "_img_s"
                    if metric in result and metric in baseline:
                        row["vs_keras_" + mode] = result[metric] / baseline[metric]
                rows.append(row)
                print(" ".join("%12s" % (("%.3g" % row[h]) if isinstance(row.get(h), float)
                                         else row.get(h, "")) for h in header))
                sys.stdout.flush()
        del built, results
        keras.backend.clear_session()
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header + (
            "precision", "dense_peak_gflops", "optimizer", "gradient_accumulation",
            "micro_batches_in_flight"))
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, precision=args.precision, dense_peak_gflops=peak,
                                 optimizer=args.optimizer,
                                 gradient_accumulation=args.gradient_accumulation,
                                 micro_batches_in_flight=args.micro_batches_in_flight))
    print("\nwrote %s" % args.csv)
    print("\nTargets (median over rounds of the paired ratio, its 95 % confidence interval, "
          "and the interquartile range of single rounds; met when the whole interval meets "
          "the goal):")
    print_targets(targets)
    targets_csv = os.path.splitext(args.csv)[0] + "_targets.csv"
    with open(targets_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("target", "value", "q25", "q75", "ci_low",
                                               "ci_high", "goal", "met"))
        writer.writeheader()
        writer.writerows(targets)
    print("wrote %s" % targets_csv)
    if rounds:
        rounds_csv = os.path.splitext(args.csv)[0] + "_rounds.csv"
        with open(rounds_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=ROUND_FIELDS)
            writer.writeheader()
            writer.writerows(rounds)
        print("wrote %s (every round's training step times; --pool-rounds pools runs)"
              % rounds_csv)
    if fixed_costs:
        print("\nPer-step fixed cost (fit per round of step time = F + a x pixels over the "
              "timed resolutions; medians with 95 % confidence intervals) and the "
              "half-resolution speed-up it allows when everything else scales with the "
              "pixels:")
    for r in fixed_costs:
        label = _model_label(r["model"])
        print("  %s %-22s F %6.1f ms  CI [%.1f, %.1f]  a %6.2f ms per 1000 px  "
              "bound %.3f  CI [%.3f, %.3f]  (%s px)" % (
                  r["size"].upper(), label, r["fixed_ms"], r["fixed_ci"][0], r["fixed_ci"][1],
                  r["ms_per_kpx"], r["bound"], r["bound_ci"][0], r["bound_ci"][1],
                  ", ".join(str(x) for x in r["resolutions"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
