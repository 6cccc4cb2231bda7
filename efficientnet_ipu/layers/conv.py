"""Group convolution (paper 001, sec. 3.1) and the 1x1 convolutions, written with
TensorFlow ops.

A group convolution is ``tf.nn.conv2d`` on a grouped kernel (``tf.nn.depthwise_conv2d``
when the group size is 1). Keras 3's ``Conv2D(groups=...)`` is not used: it wraps grouped
convolutions in an XLA function whose backward pass is far slower on CPU, and the Keras 2.6
fork in the Poplar SDK has no grouped Conv2D at all.
"""
from tensorflow import keras
import tensorflow as tf

from efficientnet_ipu import kernels as kernels_lib  # ``kernels`` is also an argument

def group_conv2d(inputs, kernel, strides, padding, input_offset=None, input_scale=None):
    """conv((inputs + input_offset) * input_scale, kernel), grouped (paper 001 sec. 3.1).

    Args:
      inputs: [N, H, W, C_in], float.
      kernel: [k, k, C_in / groups, filters], inputs' dtype; kernel[:, :, i, o] reads input
        channel (o // (filters / groups)) * (C_in / groups) + i (``tf.nn.conv2d``'s grouped
        layout). With one input channel per group and filters == C_in: depthwise.
      strides: int >= 1; padding: "SAME" or "VALID".
      input_offset: None or [C_in]: a per-input-channel shift (the zero padding is not
        shifted).
      input_scale: None or [C_in]: a per-input-channel factor, multiplied into the kernel
        (equal to scaling the inputs, without a pass over them).

    Both serve the proxy-normalized activation before the group conv (paper 002 eq. 7:
    subtract the proxy mean, divide by the proxy std).

    Returns: [N, OH, OW, filters].
    """
    k, group_size, filters = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    channels = inputs.shape[-1]
    groups = channels // group_size
    if input_offset is not None:
        inputs = inputs + input_offset
    if input_scale is not None:
        # The kernel viewed as [k, k, G, groups, filters / groups] times the scale viewed
        # as [G, groups, 1]: a broadcast, with a dense gradient.
        scale = tf.transpose(tf.reshape(input_scale, [groups, group_size]))[:, :, None]
        kernel = tf.reshape(tf.reshape(kernel, [k, k, group_size, groups, filters // groups])
                            * scale, [k, k, group_size, filters])
    if group_size == 1 and filters == channels:
        return tf.nn.depthwise_conv2d(inputs, tf.reshape(kernel, [k, k, filters, 1]),
                                      [1, strides, strides, 1], padding)
    return tf.nn.conv2d(inputs, kernel, [1, strides, strides, 1], padding)


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

    ``kernels``: "auto" (default: this project's CPU ops where they compute the layer,
    ``efficientnet_ipu.kernels``) or "tensorflow" (TensorFlow's ops only). The same
    function and kernel either way. ``implementation`` is the former name of this option
    (deprecated; "grouped", "split" and "avx2" force that variant, as
    ``kernels.override(conv=...)`` does).

    Raises:
      ValueError: bad ``filters``/``kernel_size``/``strides``/``group_size``/``padding``/
        ``kernels``/``implementation``, or (at build time) ``filters`` not divisible by the
        groups.
      RuntimeError: (at build time) where the chosen ops cannot run here (no C++ compiler
        for this project's ops, or TensorFlow's oneDNN kernels off for grouped gradients).
    """

    def __init__(self, filters, kernel_size, strides=1, group_size=16, padding="same",
                 use_bias=False, kernel_initializer=None, bias_initializer="zeros",
                 kernel_regularizer=None, kernels="auto", implementation=None, **kwargs):
        super().__init__(**kwargs)
        options = kernels_lib.settings.resolve_options(
            "GroupConv2D", kernels, conv_implementation=implementation)
        self.kernels = options["conv_kernels"]
        # None, or the variant this layer always runs (``kernels.override(conv=...)``'s
        # values; for tests and benchmarks).
        self.variant = options["conv_variant"]
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
        # Check now, before any training, that the ops it will run can run here.
        self.kernel_variant = kernels_lib.prepare_group_conv(
            channels, self.resolved_group_size, self.filters, self.kernel_size,
            self.compute_dtype, self.kernels, self.variant)
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

    def current_variant(self):
        """How the layer would run if traced now (``kernels.group_conv_variant``): "ours",
        "grouped", "split" or "reference"."""
        return kernels_lib.group_conv_variant(self.groups * self.resolved_group_size,
                                              self.resolved_group_size, self.filters,
                                              self.kernel_size, self.compute_dtype,
                                              self.kernels, self.variant)

    def call(self, inputs, input_scale=None, input_offset=None):
        """Convolve ``(inputs + input_offset) * input_scale`` (``group_conv2d``), ``inputs``
        [N, H, W, C_in]; ``input_scale``, ``input_offset``: None or [C_in]."""
        dtype = inputs.dtype
        cast = (lambda v: None if v is None else tf.cast(v, dtype))
        outputs = kernels_lib.group_conv2d(
            inputs, tf.cast(self.kernel, dtype), self.strides, self.padding,
            cast(input_offset), cast(input_scale), mode=self.kernels, variant=self.variant,
            reference=group_conv2d)
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
            kernels=self.kernels,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer)
            if self.kernel_regularizer else None))
        return config


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
        ``kernels.matmul_max_pixels()`` when the layer is traced (no limit on AVX-512
        CPUs, 28 x 28 elsewhere). Only the speed differs.
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
        limit = kernels_lib.matmul_max_pixels() if limit == "auto" else limit
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
        layer and step, a reshape's is a reshape."""
        return tf.cast(tf.reshape(self.kernel, self.kernel.shape[2:]), dtype)

    def get_config(self):
        config = super().get_config()
        config["matmul_max_pixels"] = self.matmul_max_pixels
        return config
