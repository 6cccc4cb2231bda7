"""Group convolution (paper 001, sec. 3.1) written with TensorFlow ops.

Keras 3's ``Conv2D(groups=...)`` wraps grouped convolutions in an XLA function whose
backward pass is about 115x slower on CPU, and the Keras 2.6 fork in the Poplar SDK has
no grouped Conv2D at all, so this layer calls ``tf.nn.conv2d`` on a grouped kernel
(``tf.nn.depthwise_conv2d`` when the group size is 1), or, on an AVX2 CPU, this
project's own kernels: for 16-channel groups (``group_conv16``), and for the gradients of
depthwise convolutions (``depthwise_conv``).
"""
import sys

from tensorflow import keras
import tensorflow as tf

from efficientnet_ipu.layers import depthwise_conv, group_conv16, kernels

IMPLEMENTATIONS = ("auto", "grouped", "split", "avx2", "tensorflow")


def avx2_applies(group_size, filters_per_group, dtype, kernel_size=3):
    """True if the "avx2" kernels compute this convolution in float32: 16 input and 16
    output channels per group (``group_conv16``), or a depthwise convolution (group size 1,
    one output channel per group) with a kernel of at most 7x7, whose gradients they
    compute (``depthwise_conv``)."""
    if tf.as_dtype(dtype) != tf.float32:
        return False
    if group_size == 1 and filters_per_group == 1:
        return kernel_size <= depthwise_conv.MAX_KERNEL_SIZE
    return group_size == 16 and filters_per_group == 16


def choose_implementation(groups, group_size, filters_per_group=None, dtype="float32",
                          allow_avx2=True, kernel_size=3):
    """The implementation ``"auto"`` picks for a group convolution (``"tensorflow"``: the
    same with ``allow_avx2=False``).

    On a machine with only CPUs: "avx2" for float32 convolutions with 16 input and 16
    output channels per group (``group_conv16``) and for float32 depthwise convolutions
    with kernels up to 7x7 (``depthwise_conv``: TensorFlow's forward, our gradients) when
    the CPU has AVX2 and FMA and a C++ compiler is present (without a compiler a warning
    says so and the choice below is made). Else,
    on a CPU with AVX-512F, "grouped"; without AVX-512, "split" when the group size is at
    least 8 and there are at most 16 groups, else "grouped". With a GPU, TPU or IPU:
    "grouped".

    "avx2" on this project's 2-core AVX2 CPU (TensorFlow 2.21, oneDNN), batch 32, the two
    backward passes: on [32, 28, 28, 240] 3x3 G16, 97 % of the dense convolution's
    GFLOP/s against 69 % ("grouped") and 75 % ("split") (``python -m
    efficientnet_ipu.benchmark --conv``); on B0-G16's group convolutions at 224 px,
    1.18-1.73x the previous choice per layer, 1.34x summed; whole B0-G16 training
    1.12-1.16x (``--compare-conv``).

    On a 2-core AVX-512 Xeon (issue #4, sessions 11-14), where oneDNN runs AVX-512 kernels
    and the "avx2" ops their AVX-512 blocks, forward + backward, batch 32: until session 13
    oneDNN's "grouped" was as fast or faster for whole models (B0-G16 at 160 px: 0.995x
    GN, 0.992x LN+PN with "avx2"). Session 14's kernels (the next planes prefetched from
    inside the register blocks, the kernel gradient reading the output gradient in place):
    B0-G16's group convolutions at 224 px 344 against 366 ms summed (1.05-1.21x at the
    56-112 px layers, 0.95-1.04x at 7-28 px); whole training step, "avx2" over "grouped",
    with 95 % CIs: B0-G16-GN 1.038x (1.016-1.053) at 224 px and 1.023x (1.003-1.059) at
    160 px, B0-G16-LN+PN 1.021x (1.008-1.050) and 1.037x (1.014-1.054), B2-G16-GN at
    224 px 1.025x (1.003-1.088). Hence "avx2" there too. "grouped" over "split" on that
    CPU: 1.13-1.61x for group sizes 4-64, hence no "split" on AVX-512.

    On a 2-core AMD EPYC (Zen 4: AVX-512 on 256-bit units, issue #4, session 18), batch
    32: on [32, 28, 28, 240] 3x3 G16 "avx2" ran at 112-126 % of the dense convolution's
    GFLOP/s in seven runs (Winograd counts as the direct convolution's FLOPs) against
    62-67 % for "grouped" and 58-63 % for "split"; on B0-G16's group convolutions at 224 px
    (``python -m efficientnet_ipu.benchmark --layers --kernel-variants --group-sizes=16
    --resolutions=224``) the ops' AVX-512 blocks with Winograd summed 373.0 ms, the
    AVX-512 direct blocks 405.0 ms, the AVX2 blocks 473.2 ms and "tensorflow" 575.0 ms
    (Winograd 1.18-1.42x on the 3x3 stride-1 layers, the AVX-512 blocks 1.08-1.31x the
    AVX2 ones elsewhere); whole B0-G16-BN training 1.21x with "avx2" over "tensorflow" at
    224 and 160 px. The same choice as on the Xeon.

    Measured on this project's 2-core AVX2 CPU (TensorFlow 2.21, oneDNN), forward +
    backward, batch 32, split's speed over grouped: B0-G16 at 224 px 1.63-1.78x for the 2-6
    group layers at 56-112 px, 1.07-1.16x for 10 groups at 28 px, 1.0-1.19x for 15 groups
    at 28 px, but 0.5-0.96x for 20-48 groups at 7-14 px; G4 (20-100 groups) mixed,
    0.47-1.31x. Whole B0-G16-GN training: 1.11x. GPUs, TPUs and IPUs run grouped
    convolutions natively, so a visible non-CPU device or an IPU/TPU strategy in scope
    keeps "grouped".
    """
    if not kernels.cpu_only():
        return "grouped"
    if allow_avx2 and avx2_applies(group_size, filters_per_group, dtype, kernel_size):
        if kernels.available():
            return "avx2"
        kernels.warn_once(
            "GroupConv2D: this CPU or machine cannot build the AVX2 group-convolution "
            "kernels (AVX2+FMA: %s, C++ compiler: %s), so implementation='auto' uses "
            "TensorFlow's convolutions, which are slower here"
            % (kernels.cpu_supported(), kernels.compiler()))
    if "avx512f" in kernels.cpu_flags():
        return "grouped"  # oneDNN's AVX-512 group convolutions: faster than split
    if group_size < 8 or groups > 16:
        return "grouped"
    return "split"


def check_grouped_conv_gradient_support():
    """Raise RuntimeError if grouped-convolution gradients cannot run here.

    On CPU, TensorFlow computes them only with its oneDNN kernels; they are off when
    ``TF_ENABLE_ONEDNN_OPTS=0`` or, on CPUs without AVX-512, by default. (Importing
    efficientnet_ipu before TensorFlow turns them on.) Machines with a GPU are fine.
    """
    if tf.config.list_physical_devices("GPU"):
        return
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow build without the probe: let TensorFlow decide
        return
    if not _pywrap_util_port.IsMklEnabled():
        raise RuntimeError(
            "GroupConv2D implementation='grouped' needs TensorFlow's oneDNN kernels on CPU "
            "(without them grouped-convolution gradients are not supported). Set "
            "TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow is imported (importing "
            "efficientnet_ipu first does this), or use implementation='split'.")


def resolve_group_size(channels, group_size):
    """Group size actually used for ``channels`` input channels.

    Paper 001, footnote 2: "For layers where the group size does not divide the channels,
    the group size is rounded to the nearest value that does". Ties go to the larger
    group size (fewer groups, as Graphcore's ``groups = max(C // G, 1)``). A group size
    at least ``channels`` gives one group (a dense convolution).

    Args:
      channels: int > 0, number of input channels C.
      group_size: int > 0, requested group size G (channels per group, not number of groups).

    Returns:
      int, a divisor of ``channels``.

    Raises:
      ValueError: if ``channels`` or ``group_size`` is not a positive integer.
    """
    if int(channels) != channels or channels < 1:
        raise ValueError("channels must be a positive integer, got %r" % (channels,))
    if int(group_size) != group_size or group_size < 1:
        raise ValueError("group_size must be a positive integer, got %r" % (group_size,))
    channels, group_size = int(channels), int(group_size)
    if group_size >= channels:
        return channels
    divisors = [d for d in range(1, channels + 1) if channels % d == 0]
    return min(divisors, key=lambda d: (abs(d - group_size), -d))


class GroupConv2D(keras.layers.Layer):
    """k x k convolution over groups of ``group_size`` input channels (NHWC).

    Paper 001 sec. 3.1: G is the group size (channels per group), so G=1 is a depthwise
    convolution and the number of groups is C_in / G. Where G does not divide C_in the
    nearest divisor is used (``resolve_group_size``).

    Input: float tensor [N, H, W, C_in] in the layer's compute dtype.
    Output: [N, ceil(H / s), ceil(W / s), filters] for ``padding="same"``.
    Kernel: [k, k, C_in / groups, filters] (for G=1 that is [k, k, 1, C_in] and
    ``filters`` must equal C_in, as in a depthwise convolution with multiplier 1).

    The kernel is initialised with VarianceScaling(2.0, "fan_in") by default, as
    Graphcore's EfficientNet code does for group convolutions.

    ``implementation``: "grouped" (one ``tf.nn.conv2d`` on the grouped kernel; on CPU it
    needs TensorFlow's oneDNN kernels, see ``check_grouped_conv_gradient_support``),
    "split" (one convolution per group, concatenated; runs anywhere, and on CPU it is the
    faster one for few, large groups), "avx2" (this project's CPU kernels, compiled on
    first use: ``group_conv16`` for 16 input and 16 output channels per group, float32;
    for a float32 depthwise convolution with a kernel up to 7x7, TensorFlow's forward and
    ``depthwise_conv``'s gradient ops),
    "auto" (default: ``choose_implementation``) or "tensorflow" (auto's choice among
    "grouped" and "split" only: TensorFlow's own ops). All compute the same function with the
    same kernel. Under ``kernels.portable_kernels()`` (SavedModel export) "avx2"
    traces as "grouped" (as ``tf.nn.depthwise_conv2d`` alone for G=1).

    Raises:
      ValueError: bad ``filters``/``kernel_size``/``strides``/``group_size``/``padding``/
        ``implementation``, or (at build time) ``filters`` not divisible by the groups.
      RuntimeError: (at build time) "grouped" on a CPU whose oneDNN kernels are off;
        "avx2" where its kernels cannot be built (see ``kernels.load``).
    """

    def __init__(self, filters, kernel_size, strides=1, group_size=16, padding="same",
                 use_bias=False, kernel_initializer=None, bias_initializer="zeros",
                 kernel_regularizer=None, implementation="auto", **kwargs):
        super().__init__(**kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError("GroupConv2D implementation must be one of %s, got %r"
                             % (IMPLEMENTATIONS, implementation))
        self.implementation = implementation
        for field, value in (("filters", filters), ("kernel_size", kernel_size),
                             ("strides", strides), ("group_size", group_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError("GroupConv2D %s must be a positive integer, got %r"
                                 % (field, value))
        padding = padding.upper()
        if padding not in ("SAME", "VALID"):
            raise ValueError("GroupConv2D padding must be 'same' or 'valid', got %r" % padding)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.group_size = group_size
        self.padding = padding
        self.use_bias = use_bias
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.VarianceScaling(
                2.0, mode="fan_in", distribution="truncated_normal")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.resolved_group_size = resolve_group_size(channels, self.group_size)
        self.groups = channels // self.resolved_group_size
        if self.filters % self.groups:
            raise ValueError(
                "GroupConv2D filters=%d is not divisible by the %d groups of %d channels"
                % (self.filters, self.groups, self.resolved_group_size))
        self.depthwise = self.resolved_group_size == 1 and self.filters == channels
        self.resolved_implementation = self.implementation
        filters_per_group = self.filters // self.groups
        if self.implementation in ("auto", "tensorflow"):
            self.resolved_implementation = choose_implementation(
                self.groups, self.resolved_group_size, filters_per_group, self.compute_dtype,
                allow_avx2=self.implementation == "auto", kernel_size=self.kernel_size)
        if self.resolved_implementation == "avx2":
            if not avx2_applies(self.resolved_group_size, filters_per_group,
                                self.compute_dtype, self.kernel_size):
                raise ValueError(
                    "GroupConv2D implementation='avx2' needs group_size 16 with 16 filters "
                    "per group, or group_size 1 with 1 filter per group and kernel_size <= "
                    "%d (got group_size %d after rounding, %d filters per group, "
                    "kernel_size %d), and float32 compute (got %s); use 'grouped', 'split' "
                    "or 'auto'" % (depthwise_conv.MAX_KERNEL_SIZE, self.resolved_group_size,
                                   filters_per_group, self.kernel_size, self.compute_dtype))
            # Compile now, so that a failure shows before any training.
            kernels.load("GroupConv2D implementation='avx2'",
                         "implementation='grouped' or 'split'")
        if (self.groups > 1 and not self.depthwise
                and self.resolved_implementation == "grouped"):
            check_grouped_conv_gradient_support()
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, self.resolved_group_size, self.filters),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
            trainable=True)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                        initializer=self.bias_initializer, trainable=True)
        super().build(input_shape)

    def scaled_kernel(self, input_scale):
        """The kernel with input channel c multiplied by ``input_scale[c]`` ([C_in]), so
        that convolving x with it equals convolving x * input_scale with the kernel.

        Kernel slot [:, :, i, o] reads input channel (o // (filters / groups)) * G + i, so
        the kernel viewed as [k, k, G, groups, filters / groups] is multiplied by the scale
        viewed as [G, groups, 1] (a broadcast: fewer graph ops than repeating the scale,
        and a dense gradient)."""
        k, size = self.kernel_size, self.resolved_group_size
        scale = tf.transpose(tf.reshape(tf.cast(input_scale, self.kernel.dtype),
                                        [self.groups, size]))[:, :, None]   # [G, groups, 1]
        kernel = tf.reshape(self.kernel, [k, k, size, self.groups, self.filters // self.groups])
        return tf.reshape(kernel * scale, [k, k, size, self.filters])

    def call(self, inputs, input_scale=None, input_offset=None):
        """Convolve ``(inputs + input_offset) * input_scale``, ``inputs`` [N, H, W, C_in].

        ``input_scale`` (optional, [C_in]): a per-input-channel factor folded into the
        kernel, equal to (up to round-off) scaling the inputs but without that pass over
        them; "avx2" multiplies it in as its kernels pack the kernel (no kernel-sized ops
        of its own, forward or backward), the others through ``scaled_kernel``.
        ``input_offset`` (optional, [C_in]): a per-input-channel shift (the zero
        padding is not shifted); "avx2" adds it while its kernels copy the input, the other
        implementations add it first. Both serve the proxy-normalized activation before
        the group conv (paper 002 eq. 7: subtract the proxy mean, divide by its std)."""
        use_avx2 = self.resolved_implementation == "avx2" and not kernels.portable()
        folds = use_avx2 and not self.depthwise  # group_conv16 takes the offset and scale
        kernel = self.kernel
        if input_scale is not None and not folds:  # group_conv16 scales as it packs the kernel
            kernel = self.scaled_kernel(input_scale)
        kernel = tf.cast(kernel, inputs.dtype)
        strides = [1, self.strides, self.strides, 1]
        if input_offset is not None and not folds:
            inputs = inputs + tf.cast(input_offset, inputs.dtype)
        if self.depthwise:
            kernel = tf.reshape(kernel, [self.kernel_size, self.kernel_size, self.filters, 1])
            if use_avx2:
                outputs = depthwise_conv.depthwise_conv2d(inputs, kernel, self.strides,
                                                          self.padding)
            else:
                outputs = tf.nn.depthwise_conv2d(inputs, kernel, strides, self.padding)
        elif use_avx2:
            outputs = group_conv16.group_conv16(
                inputs, kernel, self.strides, self.padding,
                None if input_offset is None else tf.cast(input_offset, inputs.dtype),
                None if input_scale is None else tf.cast(input_scale, inputs.dtype))
        elif self.resolved_implementation == "split" and self.groups > 1:
            outputs = tf.concat([
                tf.nn.conv2d(x, k, strides, self.padding)
                for x, k in zip(tf.split(inputs, self.groups, axis=-1),
                                tf.split(kernel, self.groups, axis=-1))], axis=-1)
        else:
            outputs = tf.nn.conv2d(inputs, kernel, strides, self.padding)
        if self.bias is not None:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, outputs.dtype))
        return outputs

    def compute_output_shape(self, input_shape):
        def out(size):
            if size is None:
                return None
            if self.padding == "SAME":
                return -(-size // self.strides)
            return -(-(size - self.kernel_size + 1) // self.strides)
        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(dict(
            filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
            group_size=self.group_size, padding=self.padding.lower(), use_bias=self.use_bias,
            implementation=self.implementation,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer)
            if self.kernel_regularizer else None))
        return config


# Largest image (H * W pixels) on which PointwiseConv2D runs as a matrix product where
# ``matmul_max_pixels`` is "auto" and the CPU has no AVX-512 (or the model is not on a
# CPU): on this project's 2-core AVX2 CPU (TF 2.21, oneDNN), forward + backward of
# B0-G16's 1x1 convolutions (batch 32, 224 and 160 px) ran 0.98-1.35x as fast (median
# 1.13x) as a matmul than as Keras' convolution at 28x28 px and below, and 0.79-1.05x at
# 40x40 px and above (issue #4, session 6).
MATMUL_MAX_PIXELS = 28 * 28


def auto_matmul_max_pixels():
    """``PointwiseConv2D``'s "auto" threshold (pixels): no limit on a CPU with AVX-512
    where only CPU devices are in use (``kernels.cpu_only``), else ``MATMUL_MAX_PIXELS``.

    Measured on a 2-core AMD EPYC Zen 4 (AVX-512, TF 2.21; issue #4, session 21), op time
    alone (15 interleaved rounds, less the call overhead), B0-G1's five 1x1 layers of at
    least 40x40 px, forward + input gradient + kernel gradient summed: 52.0 ms as the
    convolution against 45.9 ms as the matmul at 160 px (1.13x), 98.1 against 88.7 ms at
    224 px (1.11x); the matmul was faster in 26 of the 30 passes (slower: the kernel
    gradient of the 32 -> 16 projection at 80 and 112 px, 0.92x and 0.94x, the forward of
    the 16 -> 96 expansion at 112 px, 0.98x, and one input gradient at 56 px, 0.97x).
    Whole training steps (B0 G1-BN and G16-BN, batch 32, 40 interleaved rounds): 1.004x
    and 1.001x (G1, 160 / 224 px), 1.008x and 1.005x (G16), medians whose 95 % intervals
    all but G16's at 224 px (1.001-1.009) include 1. Session 18 measured 1.02x / 1.07x on
    the same layers on such a CPU; the AVX2 CPU of session 6 did not gain (above)."""
    if "avx512f" in kernels.cpu_flags() and kernels.cpu_only():
        return sys.maxsize
    return MATMUL_MAX_PIXELS


class PointwiseConv2D(keras.layers.Conv2D):
    """A 1x1, stride-1 ``keras.layers.Conv2D`` (MBConv's expand and projection convolutions
    and the top convolution, paper 001 sec. 3) that runs as one matrix product,
    [N*H*W, C_in] x [C_in, C_out], on images of at most ``matmul_max_pixels`` pixels (H x W,
    known when traced), and as Keras' convolution otherwise. The same weights (``kernel``
    [1, 1, C_in, C_out]) and the same values up to float round-off; checkpoints of either
    class load into the other.

    Input NHWC [N, H, W, C_in] (channels_last only), output [N, H, W, C_out], the layer's
    compute dtype.

    Args:
      filters: C_out.
      matmul_max_pixels: int >= 0 (0 always uses the convolution), or "auto" (default):
        ``auto_matmul_max_pixels()`` when the layer is traced.
      **kwargs: ``keras.layers.Conv2D``'s (``kernel_size`` and ``strides``, if given, must
        be 1; padding does not matter for 1x1).

    Raises:
      ValueError: kernel_size or strides other than 1, a channels_first data format, or a
        matmul_max_pixels other than "auto" or an int >= 0.
    """

    def __init__(self, filters, matmul_max_pixels="auto", **kwargs):
        for key in ("kernel_size", "strides", "dilation_rate"):
            value = kwargs.pop(key, 1)
            values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if values not in ((1,), (1, 1)):
                raise ValueError("PointwiseConv2D %s must be 1, got %r" % (key, value))
        if kwargs.get("data_format", "channels_last") not in (None, "channels_last"):
            raise ValueError("PointwiseConv2D data_format must be 'channels_last', got %r"
                             % (kwargs["data_format"],))
        if matmul_max_pixels != "auto" and not (
                isinstance(matmul_max_pixels, int) and matmul_max_pixels >= 0):
            raise ValueError('matmul_max_pixels must be "auto" or an int >= 0, got %r'
                             % (matmul_max_pixels,))
        kwargs["data_format"] = "channels_last"
        super().__init__(filters, 1, **kwargs)
        self.matmul_max_pixels = matmul_max_pixels

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        limit = self.matmul_max_pixels
        limit = auto_matmul_max_pixels() if limit == "auto" else limit
        if height is None or width is None or height * width > limit:
            return super().call(inputs)
        kernel = self.kernel_matrix(inputs.dtype)
        outputs = tf.matmul(tf.reshape(inputs, [-1, kernel.shape[0]]), kernel)
        batch = -1 if inputs.shape[0] is None else inputs.shape[0]
        outputs = tf.reshape(outputs, [batch, height, width, self.filters])
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def kernel_matrix(self, dtype):
        """The kernel [1, 1, C_in, C_out] as a [C_in, C_out] matrix in ``dtype``.

        A reshape, not ``kernel[0, 0]``: the slice's gradient is a StridedSliceGrad op per
        layer and step (about 0.2 ms of op time each, at every resolution; issue #4,
        session 9), a reshape's is a reshape."""
        return tf.cast(tf.reshape(self.kernel, self.kernel.shape[2:]), dtype)

    def get_config(self):
        config = super().get_config()
        config["matmul_max_pixels"] = self.matmul_max_pixels
        return config
