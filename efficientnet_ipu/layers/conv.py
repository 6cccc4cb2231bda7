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
from efficientnet_ipu.layers import inference

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
    if input_offset is not None:
        inputs = inputs + input_offset
    if input_scale is not None:
        kernel = scale_kernel_inputs(kernel, input_scale)
    if group_size == 1 and filters == channels:
        return tf.nn.depthwise_conv2d(inputs, tf.reshape(kernel, [k, k, filters, 1]),
                                      [1, strides, strides, 1], padding)
    return tf.nn.conv2d(inputs, kernel, [1, strides, strides, 1], padding)


def scale_kernel_inputs(kernel, input_scale):
    """A grouped kernel [k, k, C_in / groups, filters] whose input channel c is multiplied
    by ``input_scale[c]`` ([C_in], the kernel's dtype): convolving with it equals scaling
    the inputs first (``group_conv2d``'s layout)."""
    k, group_size, filters = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    groups = input_scale.shape[0] // group_size
    # The kernel viewed as [k, k, G, groups, filters / groups] times the scale viewed as
    # [G, groups, 1]: a broadcast, with a dense gradient.
    scale = tf.transpose(tf.reshape(input_scale, [groups, group_size]))[:, :, None]
    return tf.reshape(tf.reshape(kernel, [k, k, group_size, groups, filters // groups])
                      * scale, [k, k, group_size, filters])


GROUP_RULES = ("graphcore", "nearest_divisor")


def group_channels(channels, group_size, rule="graphcore"):
    """The input channels of each group of a group convolution with group size G.

    Rules, where G does not divide C (they agree where it does):
      * "graphcore" (the default; Graphcore's code, which produced paper 001's numbers):
        max(C // G, 1) groups; where that number does not divide C, the groups are as equal
        as they can be, the first C mod groups of them one channel larger
        (``numpy.array_split``'s order). E.g. C = 24, G = 16 (B3-B5 block1b at G16): one
        group of 24 channels (a dense 3x3 convolution); C = 240, G = 32: 7 groups, 2 of 35
        and 5 of 34 channels.
      * "nearest_divisor" (paper 001's footnote 2: "the group size is rounded to the
        nearest value that does"): C / G' groups of G' channels, G' the divisor of C nearest
        to G (``resolve_group_size``): two groups of 12 for C = 24, G = 16; eight of 30 for
        C = 240, G = 32.

    Against paper 001 Table 2 (``python -m efficientnet_ipu.analysis --table2
    --group_rule=...``; the 7 of its 18 rows where the rules differ: B3-B5 at G16, B0 and
    B2 at G32 and G64), "graphcore" comes closer in multiply-adds in 6 of the 7 (summed
    |error| 86 % against 121 %; at G16 within 1.1 % against 1.8 %) and "nearest_divisor" in
    parameters (summed |error| 1.6 M against 2.2 M; equal within the table's 0.1 M
    rounding at G16). Neither reproduces the G64 rows' multiply-adds (35-51 % low with
    both), so those rows were counted another way.

    Args: channels C > 0; group_size G > 0; rule: one of ``GROUP_RULES``.
    Returns: list of ints summing to C, one per group.
    Raises: ValueError for a non-positive C or G, or an unknown rule.
    """
    if rule not in GROUP_RULES:
        raise ValueError("group_rule must be one of %s, got %r" % (list(GROUP_RULES), rule))
    if rule == "nearest_divisor":
        size = resolve_group_size(channels, group_size)
        return [size] * (int(channels) // size)
    resolve_group_size(channels, group_size)  # the same argument checks
    groups = max(int(channels) // int(group_size), 1)
    base, extra = divmod(int(channels), groups)
    return [base + 1] * extra + [base] * (groups - extra)


def resolve_group_size(channels, group_size):
    """Group size of the "nearest_divisor" rule (``group_channels``) for ``channels``
    input channels.

    Paper 001, footnote 2: "For layers where the group size does not divide the channels,
    the group size is rounded to the nearest value that does". Ties go to the larger
    group size (fewer groups). A group size at least ``channels`` gives one group (a dense
    convolution). Graphcore's code, max(C // G, 1) groups, differs from this where G does
    not divide C (``group_channels``).

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
    convolution and the number of groups is C_in / G. Where G does not divide C_in,
    ``group_rule`` decides (``group_channels``): "graphcore" (default, Graphcore's code)
    uses max(C_in // G, 1) groups, unequal where that number does not divide C_in;
    "nearest_divisor" (the paper's footnote) uses the divisor of C_in nearest to G. Unequal
    groups run as one ``tf.nn.conv2d`` per group on a split of the input, each group with
    its own kernel variable ``kernel_<i>`` [k, k, C_i, F_i] (``kernel_variables()``); the
    output channels split like the input ones when filters == C_in, else equally.

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
                 kernel_regularizer=None, kernels="auto", implementation=None,
                 group_rule="graphcore", **kwargs):
        super().__init__(**kwargs)
        if group_rule not in GROUP_RULES:
            raise ValueError("GroupConv2D group_rule must be one of %s, got %r"
                             % (list(GROUP_RULES), group_rule))
        self.group_rule = group_rule
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
        self.group_sizes = group_channels(channels, self.group_size, self.group_rule)
        self.groups = len(self.group_sizes)
        if len(set(self.group_sizes)) > 1:
            self._build_unequal_groups(channels)
            self._build_bias()
            super().build(input_shape)
            return
        self.resolved_group_size = self.group_sizes[0]
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
        self.group_kernels = None
        self._build_bias()
        super().build(input_shape)

    def _build_bias(self):
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                        initializer=self.bias_initializer, trainable=True)

    def _build_unequal_groups(self, channels):
        if self.filters == channels:
            self.filter_sizes = list(self.group_sizes)
        elif self.filters % self.groups == 0:
            self.filter_sizes = [self.filters // self.groups] * self.groups
        else:
            raise ValueError(
                "GroupConv2D filters=%d is neither the %d input channels nor divisible by "
                "their %d unequal groups" % (self.filters, channels, self.groups))
        self.resolved_group_size = None
        self.depthwise = False
        self.kernel_variant = "split"
        self.kernel = None
        self.group_kernels = [
            self.add_weight(name="kernel_%d" % i,
                            shape=(self.kernel_size, self.kernel_size, c, f),
                            initializer=self.kernel_initializer,
                            regularizer=self.kernel_regularizer, trainable=True)
            for i, (c, f) in enumerate(zip(self.group_sizes, self.filter_sizes))]

    def kernel_variables(self):
        """The kernel variables: [kernel], or one per group where the groups are unequal."""
        return [self.kernel] if self.group_kernels is None else list(self.group_kernels)

    def current_variant(self):
        """How the layer would run if traced now (``kernels.group_conv_variant``): "ours",
        "grouped", "split" or "reference"; always "split" for unequal groups."""
        if self.group_kernels is not None:
            return "split"
        return kernels_lib.group_conv_variant(self.groups * self.resolved_group_size,
                                              self.resolved_group_size, self.filters,
                                              self.kernel_size, self.compute_dtype,
                                              self.kernels, self.variant)

    def call(self, inputs, input_scale=None, input_offset=None):
        """Convolve ``(inputs + input_offset) * input_scale`` (``group_conv2d``), ``inputs``
        [N, H, W, C_in]; ``input_scale``, ``input_offset``: None or [C_in]."""
        dtype = inputs.dtype
        cast = (lambda v: None if v is None else tf.cast(v, dtype))
        if self.group_kernels is not None:
            return self._call_unequal_groups(inputs, cast(input_scale), cast(input_offset))
        kernel = tf.cast(self.kernel, dtype)
        scale_value = (tf.get_static_value(input_scale)
                       if input_scale is not None and inference.is_folded() else None)
        if scale_value is not None:
            # A constant scale (the export's proxy norm): the scaled kernel is a constant
            # too, not recomputed from the variable at every call.
            kernel = inference.constant(lambda: scale_kernel_inputs(
                tf.cast(self.kernel, dtype), tf.constant(scale_value, dtype)))
            input_scale = None
        outputs = kernels_lib.group_conv2d(
            inputs, kernel, self.strides, self.padding,
            cast(input_offset), cast(input_scale), mode=self.kernels, variant=self.variant,
            reference=group_conv2d)
        if self.bias is not None:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, outputs.dtype))
        return outputs

    def folded_weights(self, scale, shift):
        """The kernel and bias of ``call(x) * scale + shift`` (per output channel) as one
        convolution: the kernel's output channels times ``scale``; ``shift`` plus the
        layer's bias times ``scale`` as the bias. The fold of an inference-mode batch norm
        (``layers.inference``). ``scale``, ``shift``: float32 [filters]. Returns float32
        (kernel [k, k, C_in / groups, filters], or the list of group kernels where the
        groups are unequal; bias [filters]), for ``call_folded``."""
        bias = shift if self.bias is None else shift + scale * tf.cast(self.bias, tf.float32)
        if self.group_kernels is not None:
            return [tf.cast(kernel, tf.float32) * s for kernel, s in
                    zip(self.group_kernels, tf.split(scale, self.filter_sizes))], bias
        return tf.cast(self.kernel, tf.float32) * scale, bias

    def call_folded(self, inputs, kernel, bias):
        """The convolution of ``inputs`` [N, H, W, C_in] with ``folded_weights``' kernel and
        bias instead of the layer's own; [N, OH, OW, filters] in the inputs' dtype."""
        dtype = inputs.dtype
        if self.group_kernels is not None:
            outputs = tf.concat([
                group_conv2d(x, tf.cast(k, dtype), self.strides, self.padding)
                for x, k in zip(tf.split(inputs, self.group_sizes, axis=-1), kernel)],
                axis=-1)
        else:
            outputs = kernels_lib.group_conv2d(
                inputs, tf.cast(kernel, dtype), self.strides, self.padding, None, None,
                mode=self.kernels, variant=self.variant, reference=group_conv2d)
        return tf.nn.bias_add(outputs, tf.cast(bias, outputs.dtype))

    def _call_unequal_groups(self, inputs, input_scale, input_offset):
        """Unequal groups: one ``group_conv2d`` (a dense conv) per group, concatenated."""
        pieces = tf.split(inputs, self.group_sizes, axis=-1)
        offsets = (tf.split(input_offset, self.group_sizes) if input_offset is not None
                   else [None] * self.groups)
        scales = (tf.split(input_scale, self.group_sizes) if input_scale is not None
                  else [None] * self.groups)
        outputs = tf.concat([
            group_conv2d(x, tf.cast(kernel, inputs.dtype), self.strides, self.padding,
                         offset, scale)
            for x, kernel, offset, scale in zip(pieces, self.group_kernels, offsets, scales)],
            axis=-1)
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
            kernels=self.kernels, group_rule=self.group_rule,
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
        if not self._as_matmul(inputs):
            return super().call(inputs)
        outputs = self._matmul(inputs, self.kernel_matrix(inputs.dtype))
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def folded_weights(self, scale, shift):
        """The kernel and bias of ``call(x) * scale + shift`` (per output channel, before
        the layer's activation) as one convolution: the kernel's output channels times
        ``scale``; ``shift`` plus the bias times ``scale`` as the bias. The fold of an
        inference-mode batch norm (``layers.inference``). ``scale``, ``shift``: float32
        [C_out]. Returns float32 (kernel [C_in, C_out], bias [C_out]) for ``call_folded``.

        Raises: ValueError if the layer has an activation."""
        if self.activation not in (None, keras.activations.linear):
            raise ValueError("folded_weights needs a PointwiseConv2D without activation")
        bias = shift if not self.use_bias else shift + scale * tf.cast(self.bias, tf.float32)
        return self.kernel_matrix(tf.float32) * scale, bias

    def call_folded(self, inputs, kernel, bias):
        """The 1x1 convolution of ``inputs`` [N, H, W, C_in] with ``folded_weights``'
        kernel [C_in, C_out] and bias instead of the layer's own; [N, H, W, C_out] in the
        inputs' dtype."""
        kernel = tf.cast(kernel, inputs.dtype)
        if self._as_matmul(inputs):
            outputs = self._matmul(inputs, kernel)
        else:
            outputs = tf.nn.conv2d(inputs, kernel[None, None], 1, "SAME")
        return tf.nn.bias_add(outputs, tf.cast(bias, outputs.dtype))

    def _as_matmul(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        limit = self.matmul_max_pixels
        limit = kernels_lib.matmul_max_pixels() if limit == "auto" else limit
        return height is not None and width is not None and height * width <= limit

    def _matmul(self, inputs, matrix):
        """[N, H, W, C_in] x [C_in, C_out] -> [N, H, W, C_out] as one matrix product."""
        outputs = tf.matmul(tf.reshape(inputs, [-1, matrix.shape[0]]), matrix)
        batch = -1 if inputs.shape[0] is None else inputs.shape[0]
        return tf.reshape(outputs, [batch, inputs.shape[1], inputs.shape[2], matrix.shape[1]])

    def kernel_matrix(self, dtype):
        """The kernel [1, 1, C_in, C_out] as a [C_in, C_out] matrix in ``dtype``.

        A reshape, not ``kernel[0, 0]``: the slice's gradient is a StridedSliceGrad op per
        layer and step, a reshape's is a reshape."""
        return tf.cast(tf.reshape(self.kernel, self.kernel.shape[2:]), dtype)

    def get_config(self):
        config = super().get_config()
        config["matmul_max_pixels"] = self.matmul_max_pixels
        return config
