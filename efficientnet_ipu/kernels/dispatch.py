"""Which op runs where: the dispatch rules of the CPU kernels.

Each rule takes the layer's ``kernels`` option (``settings.MODES``) and the shapes it needs,
and honours ``settings.tensorflow_only()`` and ``settings.override(...)``. The rules are
plain functions so that they can be tested on any machine (a test fakes the CPU's flags).
Why each rule is what it is, with the measurements, is in ``docs/cpu_kernels.md``.
"""
import sys

import tensorflow as tf

from efficientnet_ipu.kernels import library, settings

# The largest kernel the depthwise gradient ops' register blocks hold.
DEPTHWISE_MAX_KERNEL_SIZE = 7
# Largest image (H x W pixels) on which a 1x1 convolution runs as one matrix product where
# the CPU has no AVX-512 or the model is not on a CPU-only machine.
MATMUL_MAX_PIXELS = 28 * 28
# ``depthwise_route``'s limits: where the k - 1 pixels at a row's ends (taps in the
# padding) are at least this share of the row, oneDNN's direct convolution is faster than
# our input-gradient loops; below it, and up to this row width, ours is faster than
# oneDNN's forward.
ENDS_SHARE_FOR_ONEDNN = 0.25
WIDEST_ROW_FOR_OUR_FORWARD = 56


def ops_allowed(mode):
    """True where a layer whose ``kernels`` option is ``mode`` may run this project's ops:
    ``mode`` is "auto", outside ``settings.tensorflow_only()``, on a machine with only CPUs
    (``library.cpu_only``) where the op library builds (``library.available``)."""
    return (mode == "auto" and not settings.forced_tensorflow() and library.cpu_only()
            and library.available())


def _warn_unavailable(what):
    library.warn_once(
        "%s: this CPU or machine cannot build this project's CPU ops (AVX2+FMA: %s, C++ "
        "compiler: %s), so kernels='auto' uses TensorFlow's ops, which are slower here"
        % (what, library.cpu_supported(), library.compiler()))


def our_group_conv_computes(group_size, filters_per_group, dtype, kernel_size):
    """True if this project's ops compute this group convolution in float32: 16 input and
    16 output channels per group (the G16 ops), or a depthwise convolution (group size 1,
    one output channel per group) with a kernel of at most ``DEPTHWISE_MAX_KERNEL_SIZE``
    (TensorFlow's forward, our gradient ops)."""
    if tf.as_dtype(dtype) != tf.float32:
        return False
    if group_size == 1 and filters_per_group == 1:
        return kernel_size <= DEPTHWISE_MAX_KERNEL_SIZE
    return group_size == 16 and filters_per_group == 16


def tensorflow_conv_variant(groups, group_size, dtype="float32"):
    """TensorFlow's faster formulation of a group convolution here that can run: "grouped"
    (one ``tf.nn.conv2d`` on the grouped kernel) with a GPU, TPU or IPU, on a CPU with
    AVX-512F (oneDNN's AVX-512 group convolutions), and for group sizes below 8 or more
    than 16 groups; else "split" (one convolution per group). Float16 on a CPU-only machine
    is always "split": TensorFlow has no float16 gradient of a grouped convolution on CPU."""
    if library.cpu_only() and tf.as_dtype(dtype) == tf.float16 and groups > 1 \
            and group_size > 1:
        return "split"
    if not library.cpu_only() or "avx512f" in library.cpu_flags():
        return "grouped"
    if group_size < 8 or groups > 16:
        return "grouped"
    return "split"


def group_conv_variant(groups, group_size, filters_per_group, dtype, kernel_size, mode):
    """How a group convolution runs: "ours" (this project's ops), "grouped" or "split"
    (``tensorflow_conv_variant``), or "reference" (the layer's own TensorFlow formulation,
    inside ``settings.tensorflow_only()``).

    "ours" wherever ``ops_allowed(mode)`` and ``our_group_conv_computes``; a warning says
    so where the library cannot be built for such a layer. ``settings.override(conv=...)``
    forces a variant.

    Raises:
      ValueError: ``override(conv="ours")`` for a convolution our ops do not compute.
    """
    computes = our_group_conv_computes(group_size, filters_per_group, dtype, kernel_size)
    forced = settings.overridden("conv")
    if settings.forced_tensorflow():
        return "reference"
    if forced == "ours":
        if not computes:
            raise ValueError(
                "this project's group-convolution ops compute group_size 16 with 16 filters "
                "per group, or group_size 1 with 1 filter per group and kernel_size <= %d, "
                "in float32 (got group_size %d, %d filters per group, kernel_size %d, %s)"
                % (DEPTHWISE_MAX_KERNEL_SIZE, group_size, filters_per_group, kernel_size,
                   tf.as_dtype(dtype).name))
        return "ours"
    if forced in ("grouped", "split"):
        return forced
    if forced is None and computes and mode == "auto" and library.cpu_only():
        if library.available():
            return "ours"
        _warn_unavailable("GroupConv2D")
    return tensorflow_conv_variant(groups, group_size, dtype)


def depthwise_route(width, kernel_size, stride, padding):
    """Which code runs the two passes of a depthwise layer that are one convolution.

    With stride 1, "SAME" padding and an odd kernel, the input gradient is the forward
    convolution of the output gradient with the kernel turned by 180 degrees, so either
    code can run either pass.

    Args:
      width: the input's width W in pixels (int), or None when not known at trace time
        (then both passes keep their usual code).
      kernel_size: k (int); stride: int >= 1; padding: "SAME" or "VALID".

    Returns:
      (our_forward, onednn_input_gradient), two bools: the forward runs on our
      input-gradient op with the turned kernel, or the input gradient runs on
      ``tf.nn.depthwise_conv2d``. At most one is True, only for stride 1, "SAME" and an
      odd k >= 3.
    """
    if width is None or stride != 1 or padding != "SAME" or kernel_size < 3 \
            or kernel_size % 2 == 0:
        return False, False
    mostly_ends = (kernel_size - 1) >= ENDS_SHARE_FOR_ONEDNN * width
    return (not mostly_ends and width <= WIDEST_ROW_FOR_OUR_FORWARD), mostly_ends


def matmul_max_pixels():
    """The largest image (H x W) on which a 1x1 convolution runs as one matrix product: no
    limit on a CPU with AVX-512 on a CPU-only machine, else ``MATMUL_MAX_PIXELS``."""
    if "avx512f" in library.cpu_flags() and library.cpu_only():
        return sys.maxsize
    return MATMUL_MAX_PIXELS


def norm_ops_apply(x, activation, mode="auto"):
    """True if the fused normalization ops (scale-shift-activation, channel moments,
    group and batch statistics, the squeeze-excite gate) run for ``x``: float32
    [N, H, W, C], an activation the ops compute (``FUSED_ACTIVATIONS``, or None for the
    statistics alone), ``ops_allowed(mode)``, and not ``override(norm_ops=False)``."""
    if settings.overridden("norm_ops") is False:
        return False
    if activation is not None and activation not in FUSED_ACTIVATIONS:
        return False
    return x.dtype == tf.float32 and len(x.shape) == 4 and ops_allowed(mode)


def statistics_ops_apply(mode):
    """True if the fused [N, C] statistics ops (group and batch statistics) run:
    ``ops_allowed(mode)`` and not ``override(norm_ops=False)``."""
    return settings.overridden("norm_ops") is not False and ops_allowed(mode)


def proxy_op_applies(activation, mode):
    """True if the proxy statistics run as the fused op: an activation it computes,
    ``ops_allowed(mode)`` and not ``override(proxy=False)``; a warning says so where the
    library cannot be built on a CPU-only machine."""
    if settings.overridden("proxy") is False or activation not in FUSED_ACTIVATIONS:
        return False
    if mode == "auto" and not settings.forced_tensorflow() and library.cpu_only() \
            and not library.available():
        _warn_unavailable("ProxyNormActivation")
    return ops_allowed(mode)


def folds_proxy_norm(conv_variant, depthwise):
    """True if an MBConv block under GN/LN/IN + proxy norm folds the proxy means and scales
    into its convolutions: where its group convolution runs on the G16 ops
    (``conv_variant`` "ours", not depthwise), which take the mean and scale while they
    pack their input and kernel. On TensorFlow's convolutions the fold adds a pass of its
    own and the plain composition is faster. ``settings.override(fold=...)`` forces it."""
    forced = settings.overridden("fold")
    if forced is not None:
        return bool(forced)
    return conv_variant == "ours" and not depthwise


# Activations the fused ops compute (``csrc/vector_math.h``), by the names the layers use.
FUSED_ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu",
                     "linear": "linear"}
