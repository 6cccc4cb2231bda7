"""Per-layer tables: the group convolution against the dense one (``--conv``), the
normalization layers (``--norm-layers``), one MBConv block, and each GroupConv2D shape of
a model (``--layers``)."""
from tensorflow import keras
import numpy as np
import tensorflow as tf

from efficientnet_ipu import kernels
from efficientnet_ipu import layers as L
from efficientnet_ipu.benchmark.timing import interleaved_times, paired_ratio, fwd_bwd_step


CONV_SHAPE = (32, 28, 28, 240)  # the conv table's tensor: 3x3, group size 16


def conv_fwd_bwd_step(layer, shape):
    """``fwd_bwd_step`` of the conv layer ``layer`` on a random ``shape`` input (NHWC)."""
    return fwd_bwd_step(layer, tf.random.normal(shape))


def conv_macs(layer, shape):
    """MACs of one call of a conv layer on ``shape`` (output pixels x kernel size)."""
    out = layer.compute_output_shape(shape)
    return int(np.prod(out[:3])) * int(np.prod(layer.kernel.shape if hasattr(layer, "kernel")
                                               else layer.depthwise_kernel.shape))


def conv_variant(channels, group_size, variant, kernel_size=3, strides=1):
    """A GroupConv2D that always runs ``variant`` (``kernels.settings.CONV_VARIANTS``)."""
    layer = L.GroupConv2D(channels, kernel_size, strides=strides, group_size=group_size)
    layer.variant = variant
    return layer


def conv_table(steps, warmup, shape=CONV_SHAPE):
    """Rows comparing grouped-convolution implementations with the dense convolution, all
    timed in the same interleaved rounds; the first row (dense) is the peak GFLOP/s.

    Each row: case, ms (median), gflops (at the median), of_dense (median over rounds of
    its GFLOP/s over dense's in the same round), of_dense_iqr (25th, 75th percentile) and
    of_dense_ci (95 % confidence interval of the median, ``median_ci``)."""
    c = shape[-1]
    cases = [
        ("dense Conv2D", keras.layers.Conv2D(c, 3, padding="same", use_bias=False)),
        ("GroupConv2D G16 grouped", conv_variant(c, 16, "grouped")),
        ("GroupConv2D G16 split", conv_variant(c, 16, "split")),
        ("GroupConv2D G16 ours", conv_variant(c, 16, "ours")),
        ("GroupConv2D G16 tensorflow", L.GroupConv2D(c, 3, group_size=16,
                                                     kernels="tensorflow")),
        ("GroupConv2D G16 auto (default)", L.GroupConv2D(c, 3, group_size=16)),
        ("GroupConv2D G1 tensorflow", L.GroupConv2D(c, 3, group_size=1,
                                                    kernels="tensorflow")),
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
    (by default the block folds only where the group convolution runs on this project's
    ops), in interleaved rounds."""
    def block(norm, fold=True):
        layer = L.MBConvBlock(shape[-1], shape[-1], 3, 1, expand_ratio, group_size,
                              norm=norm, name="block2b")
        layer.fold = fold
        return layer
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
    (NHWC, float32), in ``steps`` interleaved rounds (``interleaved_times``)."""
    x = tf.random.normal(shape)
    return interleaved_times({name: fwd_bwd_step(fn, x) for name, fn in cases.items()},
                             steps, 1)


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


# The CPU op library's kernel variants (``kernels.block_variant``), read when TensorFlow
# constructs each op's kernel: auto's own choice
# (AVX-512 blocks and Winograd F(2x2, 3x3) on AVX-512 CPUs), the direct AVX-512 blocks, and
# the AVX2 blocks. On a CPU without AVX-512 the three are the same kernels.
KERNEL_VARIANTS = {"avx512-direct": dict(winograd=False),
                   "avx2-blocks": dict(avx2_only=True),
                   "general-kernel-grad": dict(per_group=False)}


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
    includes: the tf.function call, the thread hand-offs and the copies out (about 1 ms on
    a 2-core CPU, the same at every resolution); without it the small layers' speed-ups
    with resolution look smaller than they are.

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
                                              group_size=group_size, kernels=impl), x)
        steps_by_impl = {impl: build(impl) for impl in ("tensorflow", "auto")}
        steps_by_impl["empty step"] = fwd_bwd_step(tf.identity, x)
        for name, variables in (KERNEL_VARIANTS.items() if kernel_variants else ()):
            with kernels.block_variant(**variables):  # restored after the block
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
