"""EfficientNet building blocks: normalization choice, squeeze-excite and MBConv.

The MBConv block follows keras.applications' EfficientNet (Tan & Le, 2019) with the
changes of paper 001 sec. 3.1-3.2: the depthwise convolution becomes a group convolution
of group size G, and the normalization may be batch-independent (GN, LN, IN) with or
without proxy-normalized activations (paper 002 sec. 5 and Appendix A.1).
"""
import contextlib
import threading

from tensorflow import keras
import tensorflow as tf

from efficientnet_ipu import kernels as kernels_lib  # ``kernels`` is also an argument
from efficientnet_ipu.layers import inference, proxy_norm_folded, seeding
from efficientnet_ipu.layers.conv import GroupConv2D, PointwiseConv2D
from efficientnet_ipu.layers.norm import (INSTANCE, BatchNormalization, GroupNormalization,
                                          scale_shift_activation)
from efficientnet_ipu.layers.proxy_norm import Activation, ProxyNormActivation, get_activation

NORM_BASES = ("bn", "gn", "ln", "in")
NORMS = NORM_BASES + tuple(base + "_pn" for base in NORM_BASES)
EPSILON = 1e-3  # paper 001 sec. 3.4: normalization epsilon

# keras.applications' EfficientNet initializers; Graphcore's code uses the same
# VarianceScaling(2.0, fan_out) for 1x1 and stem convolutions.
CONV_INITIALIZER = {"class_name": "VarianceScaling",
                    "config": {"scale": 2.0, "mode": "fan_out",
                               "distribution": "truncated_normal"}}


def parse_norm(norm):
    """Split a norm name into (base, proxy_norm), e.g. "ln_pn" -> ("ln", True).

    Raises: ValueError naming the allowed values for an unknown norm.
    """
    if norm not in NORMS:
        raise ValueError("norm must be one of %s, got %r" % (list(NORMS), norm))
    return norm[:2], norm.endswith("_pn")


def make_norm(norm, name, norm_groups=4, center=True, scale=True, kernels="auto",
              norm_grouping="contiguous"):
    """A normalization layer for ``norm`` in ``NORMS`` (the "_pn" suffix is ignored here).

    BN is Keras' BatchNormalization (momentum 0.99, epsilon 1e-3, as keras.applications;
    ``norm.BatchNormalization``); GN uses ``norm_groups`` groups (4 in paper 001), LN 1
    group, IN one per channel; ``norm_grouping`` is GN's ``grouping``. ``kernels``: "auto"
    or "tensorflow" (same function).
    """
    base, _ = parse_norm(norm)
    if base == "bn":
        return BatchNormalization(momentum=0.99, epsilon=EPSILON, center=center, scale=scale,
                                  name=name, kernels=kernels)
    groups = {"gn": norm_groups, "ln": 1, "in": INSTANCE}[base]
    return GroupNormalization(groups=groups, epsilon=EPSILON, center=center, scale=scale,
                              grouping=norm_grouping, name=name, kernels=kernels)


_observers = threading.local()


@contextlib.contextmanager
def observe_norm_inputs(fn):
    """Within the block (this thread), every ``NormActivation`` call first calls
    ``fn(layer, inputs)`` with its input [N, H, W, C] (the pre-normalization activations),
    for analysis (``efficientnet_ipu.analysis.power``). Run the model eagerly to see
    values. Nestable."""
    previous = getattr(_observers, "fns", ())
    _observers.fns = previous + (fn,)
    try:
        yield
    finally:
        _observers.fns = previous


class NormActivation(keras.layers.Layer):
    """Normalization followed by an activation, with or without proxy normalization.

    Without proxy norm: norm (with its own affine) -> activation.
    With proxy norm: norm (no affine) -> ProxyNormActivation (owns the affine), in the
    given PN ``mode`` (see ProxyNormActivation). Sublayers are named ``<prefix>bn`` and
    ``<prefix>activation`` as keras.applications names them. After GN, LN or IN the
    norm's scale-and-shift and the activation are one ``norm.scale_shift_activation`` (the
    sublayers' weights are used without calling them); after BN too where this project's
    ops compute it (Keras 3), with the batch statistics from
    ``BatchNormalization.scale_shift``.

    ``kernels``: "auto" or "tensorflow" (``efficientnet_ipu.kernels``; same function).
    ``proxy_implementation`` is the former name of the proxy statistics' option
    (deprecated; "tensorflow" sets it for the ProxyNormActivation only).

    Input [N, H, W, C]; output the same shape (a tuple with a [C] scale in mode "split";
    without proxy norm the "split" scale is None).

    Raises: ValueError for an unknown norm, activation, mode or kernels.
    """

    def __init__(self, norm="bn", norm_groups=4, activation="swish", mode="normalize",
                 proxy_params=True, prefix="", bn_name="bn", kernels="auto",
                 proxy_implementation=None, proxy_kernels=None, norm_grouping="contiguous",
                 **kwargs):
        super().__init__(**kwargs)
        self.norm, self.norm_groups, self.activation = norm, norm_groups, activation
        self.mode, self.proxy_params, self.prefix, self.bn_name = (
            mode, proxy_params, prefix, bn_name)
        options = kernels_lib.settings.resolve_options(
            "NormActivation", kernels, proxy_implementation=proxy_implementation)
        self.kernels = kernels
        self.proxy_kernels = kernels_lib.check_mode(
            options["proxy_kernels"] if proxy_kernels is None else proxy_kernels,
            "NormActivation proxy_kernels")
        _, self.use_pn = parse_norm(norm)
        get_activation(activation)
        affine = not self.use_pn
        self.norm_grouping = norm_grouping
        self.norm_layer = make_norm(norm, prefix + bn_name, norm_groups, center=affine,
                                    scale=affine, kernels=kernels, norm_grouping=norm_grouping)
        if self.use_pn:
            self.act_layer = ProxyNormActivation(activation, proxy_params=proxy_params,
                                                 mode=mode, name=prefix + "activation",
                                                 kernels=self.proxy_kernels)
        else:
            self.act_layer = Activation(activation, name=prefix + "activation")
        # GN/LN/IN (with PN or not) then the activation: the norm's per-example scale and
        # shift and the activation as one scale_shift_activation; BN without PN likewise.
        self.group_norm = isinstance(self.norm_layer, GroupNormalization)
        self.proxy_after_group_norm = self.use_pn and self.group_norm
        self.batch_norm = isinstance(self.norm_layer, BatchNormalization) and not self.use_pn

    def build(self, input_shape):
        if self.group_norm or self.batch_norm:  # call() may use their weights without calling
            self.norm_layer.build(input_shape)
            self.act_layer.build(input_shape)
        super().build(input_shape)

    def proxy_parts(self, inputs, post=False):
        """For proxy norm after GN, LN or IN: (activated, mean, scale) with
        activated = act(gamma * norm(inputs) + beta) ([N, H, W, C], inputs' dtype) and the
        proxy mean and rsqrt(proxy variance + eps~) (float32 [C] each), so that the
        proxy-normalized output is (activated - mean) * scale. MBConvBlock folds the mean
        and the scale into the neighbouring convolutions instead of applying them.

        The norm's statistics and PN's (gamma, beta) make one affine (the norm has none of
        its own; ``GroupNormalization.scale_shift``'s ``affine``), computed with the
        activation by ``norm.scale_shift_activation``. With ``post``
        the same op also applies what this layer's ``mode`` takes of PN (paper 002 eq. 7):
        "normalize" (activated - mean) * scale, "center" and "split" activated - mean;
        ``activated`` is then that result."""
        if not self.proxy_after_group_norm:
            raise ValueError("proxy_parts needs norm in gn_pn/ln_pn/in_pn, got %r"
                             % (self.norm,))
        pn_affine = (tf.cast(self.act_layer.gamma, tf.float32),
                     tf.cast(self.act_layer.beta, tf.float32))
        scale, shift, inputs = self.norm_layer.scale_shift_through(inputs, affine=pn_affine)
        mean, proxy_scale = self.act_layer.proxy_mean_scale()
        post_affine = None
        if post and self.mode == "normalize":
            post_affine = (proxy_scale, -mean * proxy_scale)
        elif post:
            post_affine = (tf.ones_like(mean), -mean)
        activated = scale_shift_activation(inputs, scale, shift, self.activation,
                                           self.act_layer.activation_fn, post=post_affine,
                                           mode=self.kernels)
        return activated, mean, proxy_scale

    def call_folded(self, conv, inputs):
        """This layer's output on ``conv(inputs)`` at inference, with the batch norm
        folded into the convolution (``fold_batch_norm``; ``layers.inference``).
        ``conv``: the GroupConv2D or PointwiseConv2D before this layer; ``inputs``: its
        input. Output as ``call``'s.

        Raises: ValueError if the norm is not a batch norm (bn or bn_pn)."""
        if not isinstance(self.norm_layer, BatchNormalization):
            raise ValueError("call_folded needs norm in bn/bn_pn, got %r" % (self.norm,))
        x = self.act_layer(fold_batch_norm(conv, self.norm_layer, inputs))
        if self.mode == "split" and not self.use_pn:
            return x, None
        return x

    def call(self, inputs, training=None):
        for observe in getattr(_observers, "fns", ()):
            observe(self, inputs)
        if self.proxy_after_group_norm:
            # PN's mean and scale in the same op as the norm and the activation.
            x, _, scale = self.proxy_parts(inputs, post=True)
            return (x, tf.cast(scale, x.dtype)) if self.mode == "split" else x
        if self.group_norm:
            scale, shift, inputs = self.norm_layer.scale_shift_through(inputs)
            x = scale_shift_activation(inputs, scale, shift, self.activation,
                                       self.act_layer.activation_fn, mode=self.kernels)
            return (x, None) if self.mode == "split" else x
        if self.batch_norm and self.norm_layer.fusable(inputs):
            x = kernels_lib.batch_norm_activation(
                inputs, self.activation, self.kernels,
                composed=lambda: self.norm_layer.normalize_activate(
                    inputs, training, self.activation, self.act_layer.activation_fn),
                reference=lambda: self.act_layer(self.norm_layer(inputs, training=training)))
        else:
            x = self.act_layer(self.norm_layer(inputs, training=training))
        if self.mode == "split" and not self.use_pn:
            return x, None
        return x

    def get_config(self):
        config = super().get_config()
        config.update(dict(norm=self.norm, norm_groups=self.norm_groups,
                           activation=self.activation, mode=self.mode,
                           proxy_params=self.proxy_params, prefix=self.prefix,
                           bn_name=self.bn_name, kernels=self.kernels,
                           proxy_kernels=self.proxy_kernels, norm_grouping=self.norm_grouping))
        return config


def fold_batch_norm(conv, batch_norm, inputs):
    """``batch_norm(conv(inputs))`` at inference as one convolution: ``conv``'s kernel and
    bias with the norm's ``inference_scale_shift`` folded in (``conv.folded_weights``),
    constants of the weights within ``inference.folded()``. ``conv``: GroupConv2D or
    PointwiseConv2D; ``batch_norm``: the ``BatchNormalization`` after it; ``inputs``
    [N, H, W, C_in]. Returns [N, OH, OW, C_out] in the inputs' dtype."""
    def weights():
        return conv.folded_weights(*batch_norm.inference_scale_shift(conv.filters))
    kernel, bias = inference.constant(weights) if inference.is_folded() else weights()
    return conv.call_folded(inputs, kernel, bias)


def channel_gate(x, gate, mode="auto"):
    """x * gate[:, None, None, :]: the squeeze-excite gate applied to its input (x
    [N, H, W, C], gate [N, C], x's dtype; through ``kernels.channel_gate``)."""
    return kernels_lib.channel_gate(x, gate, mode, reference=_channel_gate_reference)


def _channel_gate_reference(x, gate):
    return x * gate[:, None, None, :]


def squeeze_excite(x, gate_fn, params, mode="auto"):
    """(x * g[:, None, None, :], g) with the squeeze-excite gate g = gate_fn(m, *params),
    m = mean over H and W of x (through ``kernels.squeeze_excite``).

    Args:
      x: [N, H, W, C]; gate_fn: maps m [N, C] (x's dtype) and ``params`` to g [N, C];
      params: list of tensors (e.g. the layer's weights, cast), differentiated too;
      mode: "auto" or "tensorflow".

    Returns:
      (y [N, H, W, C], g [N, C]); g may feed other ops (the folded proxy norm's offset),
      and its gradient from them joins the gate's.
    """
    def reference(x, gate_fn, params):
        gate = gate_fn(tf.reduce_mean(x, axis=[1, 2]), *params)
        return channel_gate(x, gate, mode), gate
    return kernels_lib.squeeze_excite(x, gate_fn, params, mode, reference=reference)


class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-excitation gate (Hu et al., 2018) as in EfficientNet's MBConv.

    x * sigmoid(W2 act(W1 mean_hw(x) + b1) + b2), with hidden width ``filters_se``
    (0.25 x the block's input channels in EfficientNet). No proxy norm inside (paper 002
    Appendix A.1). ``scale`` ([C], optional) multiplies the gate: that is how the 1/std
    of a proxy-normalized activation in mode "split" is applied (Graphcore's code).

    Input [N, H, W, C]; output the same shape and dtype. Weights: reduce_kernel [C, S],
    reduce_bias [S], expand_kernel [S, C], expand_bias [C], S = ``filters_se``.
    ``kernels``: "auto" or "tensorflow" (same function).
    """

    def __init__(self, filters_se, activation="swish", kernels="auto", **kwargs):
        super().__init__(**kwargs)
        self.kernels = kernels_lib.check_mode(kernels, "SqueezeExcite kernels")
        if not isinstance(filters_se, int) or filters_se < 1:
            raise ValueError("SqueezeExcite filters_se must be a positive integer, got %r"
                             % (filters_se,))
        self.filters_se = filters_se
        self.activation = activation
        self.activation_fn = get_activation(activation)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        init = keras.initializers.get(CONV_INITIALIZER)
        self.reduce_kernel = self.add_weight(name="reduce_kernel",
                                             shape=(channels, self.filters_se),
                                             initializer=init, trainable=True)
        self.reduce_bias = self.add_weight(name="reduce_bias", shape=(self.filters_se,),
                                           initializer="zeros", trainable=True)
        self.expand_kernel = self.add_weight(name="expand_kernel",
                                             shape=(self.filters_se, channels),
                                             initializer=keras.initializers.get(
                                                 CONV_INITIALIZER), trainable=True)
        self.expand_bias = self.add_weight(name="expand_bias", shape=(channels,),
                                           initializer="zeros", trainable=True)
        super().build(input_shape)

    def gated(self, inputs, scale=None, center=None):
        """(inputs * gate, gate [N, C]) for ``inputs`` [N, H, W, C] (``squeeze_excite``):
        the gate times ``scale`` ([C]) if given; with ``center`` ([C]) the gate of
        inputs - center (the squeeze is shifted, no pass over the inputs), while the
        unshifted inputs are gated."""
        dtype, channels = inputs.dtype, inputs.shape[-1]
        params = [tf.cast(w, dtype) for w in (self.reduce_kernel, self.reduce_bias,
                                              self.expand_kernel, self.expand_bias)]
        params.append(tf.ones([channels], dtype) if scale is None else tf.cast(scale, dtype))
        params.append(tf.zeros([channels], dtype) if center is None
                      else tf.cast(center, dtype))

        def gate_fn(squeezed, reduce_kernel, reduce_bias, expand_kernel, expand_bias,
                    scale, center):
            hidden = self.activation_fn(tf.matmul(squeezed - center, reduce_kernel)
                                        + reduce_bias)
            return tf.sigmoid(tf.matmul(hidden, expand_kernel) + expand_bias) * scale
        return squeeze_excite(inputs, gate_fn, params, self.kernels)

    def call(self, inputs, scale=None):
        return self.gated(inputs, scale)[0]

    def get_config(self):
        config = super().get_config()
        config.update(dict(filters_se=self.filters_se, activation=self.activation,
                           kernels=self.kernels))
        return config


def drop_path(x, rate, training, name="drop_path"):
    """Stochastic depth (Huang et al., 2016; paper 001 sec. 3.4): zero whole examples of
    the residual branch ``x`` ([N, H, W, C]) with probability ``rate`` during training,
    scaling the kept ones by 1 / (1 - rate), so that the expectation is ``x``; ``x`` itself
    when not training or ``rate`` <= 0. The draws are seeded by ``name`` within
    ``seeding.step_seed`` (the training loops), else stateful.

    The [N, 1, 1, 1] factor mask / (1 - rate) is formed first, so that the forward and the
    backward pass each make one pass over ``x`` (``x / keep * mask`` made two of each)."""
    if not training or rate <= 0:
        return x
    keep = 1.0 - rate
    mask = tf.floor(keep + seeding.uniform([tf.shape(x)[0], 1, 1, 1], name, x.dtype))
    return x * (mask / keep)


class MBConvBlock(keras.layers.Layer):
    """Mobile inverted bottleneck with squeeze-excite (MBConv), NHWC.

    expand 1x1 conv -> norm -> act (skipped when ``expand_ratio`` == 1);
    k x k GroupConv2D (group size ``group_size``, stride ``strides``; ``group_rule`` where
    G does not divide the channels: "nearest_divisor" or "graphcore", see
    ``conv.group_channels``) -> norm -> act;
    squeeze-excite (width ``se_ratio`` x ``filters_in``);
    project 1x1 conv -> norm (only a scale, no shift, under proxy norm with proxy params:
    paper 002 Appendix A.1);
    stochastic-depth residual when ``strides`` == 1 and ``filters_in`` == ``filters_out``.

    With proxy norm, the expand activation is fully proxy-normalized, the group-conv
    activation is mean-subtracted and its 1/std scale is folded into the SE gate
    (Graphcore's EfficientNet). With GN/LN/IN + PN the remaining proxy means and scales
    may be folded into the neighbouring linear layers (``proxy_norm_folded``): the same
    function, fewer passes over the activations, where the group conv runs on this
    project's G16 ops (``kernels.folds_proxy_norm``), and always in the export's inference
    graph (``layers.inference.folded``), where under BN each convolution and the batch norm
    after it also run as one convolution (``fold_batch_norm``).

    ``kernels``: "auto" or "tensorflow" (``efficientnet_ipu.kernels``; same function).
    ``fold_proxy_norm`` ("auto", True, False), ``conv_implementation`` and
    ``proxy_implementation`` are former speed options, deprecated: "auto" is the rule
    above; True / False force the fold; "tensorflow" turns this project's ops off for the
    group conv or the proxy statistics only; "grouped", "split" and "avx2" force that
    group-conv variant.

    Input [N, H, W, filters_in]; output [N, ceil(H/s), ceil(W/s), filters_out].
    Sublayers carry keras.applications' names with the block's name as prefix, e.g.
    ``block2a_expand_conv``, ``block2a_dwconv`` (``block2a_gconv`` when group_size > 1),
    ``block2a_bn``, ``block2a_se``, ``block2a_project_conv``.

    Raises:
      ValueError: bad sizes, norm, activation or kernels (each message names the field).
    """

    def __init__(self, filters_in, filters_out, kernel_size=3, strides=1, expand_ratio=6,
                 group_size=1, se_ratio=0.25, norm="bn", norm_groups=4, activation="swish",
                 drop_rate=0.0, proxy_params=True, kernels="auto", fold_proxy_norm=None,
                 conv_implementation=None, proxy_implementation=None,
                 norm_grouping="contiguous", group_rule="graphcore", **kwargs):
        super().__init__(**kwargs)
        for field, value in (("filters_in", filters_in), ("filters_out", filters_out),
                             ("kernel_size", kernel_size), ("strides", strides),
                             ("expand_ratio", expand_ratio), ("group_size", group_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError("MBConvBlock %s must be a positive integer, got %r"
                                 % (field, value))
        if not 0 <= drop_rate < 1:
            raise ValueError("MBConvBlock drop_rate must be in [0, 1), got %r" % (drop_rate,))
        if not 0 < se_ratio <= 1:
            raise ValueError("MBConvBlock se_ratio must be in (0, 1], got %r" % (se_ratio,))
        options = kernels_lib.settings.resolve_options(
            "MBConvBlock", kernels, fold_proxy_norm=fold_proxy_norm,
            conv_implementation=conv_implementation,
            proxy_implementation=proxy_implementation)
        # None: kernels.folds_proxy_norm decides when traced; True / False force the fold.
        self.fold = options["fold"]
        proxy_kernels = options["proxy_kernels"]
        self.config_args = dict(
            filters_in=filters_in, filters_out=filters_out, kernel_size=kernel_size,
            strides=strides, expand_ratio=expand_ratio, group_size=group_size,
            se_ratio=se_ratio, norm=norm, norm_groups=norm_groups, activation=activation,
            drop_rate=drop_rate, proxy_params=proxy_params, kernels=kernels,
            norm_grouping=norm_grouping, group_rule=group_rule)
        _, use_pn = parse_norm(norm)
        prefix = self.name + "_"
        filters = filters_in * expand_ratio
        self.expand_conv = self.expand_norm_act = None
        if expand_ratio != 1:
            self.expand_conv = PointwiseConv2D(
                filters, use_bias=False,
                kernel_initializer=CONV_INITIALIZER, name=prefix + "expand_conv")
            self.expand_norm_act = NormActivation(
                norm, norm_groups, activation, "normalize", proxy_params,
                prefix=prefix + "expand_", name=prefix + "expand_norm_act", kernels=kernels,
                proxy_kernels=proxy_kernels, norm_grouping=norm_grouping)
        self.group_conv = GroupConv2D(
            filters, kernel_size, strides=strides, group_size=group_size,
            kernels=options["conv_kernels"], group_rule=group_rule,
            name=prefix + ("dwconv" if group_size == 1 else "gconv"))
        self.group_conv.variant = options["conv_variant"]
        self.norm_act = NormActivation(norm, norm_groups, activation, "split", proxy_params,
                                       prefix=prefix, name=prefix + "norm_act",
                                       kernels=kernels, proxy_kernels=proxy_kernels,
                                       norm_grouping=norm_grouping)
        self.se = SqueezeExcite(max(1, int(filters_in * se_ratio)), activation,
                                kernels=kernels, name=prefix + "se")
        self.project_conv = PointwiseConv2D(
            filters_out, use_bias=False,
            kernel_initializer=CONV_INITIALIZER, name=prefix + "project_conv")
        # Under PN with proxy parameters the final affine is a channel-wise scale only.
        self.project_norm = make_norm(norm, prefix + "project_bn", norm_groups,
                                      center=not (use_pn and proxy_params), scale=True,
                                      kernels=kernels, norm_grouping=norm_grouping)
        self.residual = strides == 1 and filters_in == filters_out
        self.drop_rate = drop_rate

    def build(self, input_shape):
        if self.norm_act.proxy_after_group_norm:
            # The folded form uses these sublayers' weights without calling them.
            shape = (None, None, None, self.config_args["filters_in"]
                     * self.config_args["expand_ratio"])
            for layer in (self.expand_norm_act, self.group_conv, self.norm_act, self.se):
                if layer is not None:
                    layer.build(shape)
        super().build(input_shape)

    def folds_proxy_norm(self):
        """True if this block runs the folded form when traced now: GN/LN/IN + PN, and
        ``kernels.folds_proxy_norm`` (or the deprecated ``fold_proxy_norm``) says so."""
        if not self.norm_act.proxy_after_group_norm:
            return False
        if self.fold is not None:
            return self.fold
        return kernels_lib.folds_proxy_norm(self.group_conv.current_variant(),
                                            self.group_conv.depthwise)

    def folds_batch_norm(self, training):
        """True if this block runs its convolutions with the batch norms folded in when
        traced now (BN or BN + PN, inference, within ``inference.folded()``)."""
        return (isinstance(self.project_norm, BatchNormalization)
                and inference.folds_batch_norm(training))

    def call(self, inputs, training=None):
        if self.folds_proxy_norm():
            x = proxy_norm_folded.mbconv_branch(self, inputs)
        elif self.folds_batch_norm(training):
            x = inputs
            if self.expand_conv is not None:
                x = self.expand_norm_act.call_folded(self.expand_conv, x)
            x, scale = self.norm_act.call_folded(self.group_conv, x)
            x = self.se(x, scale=scale)
            x = fold_batch_norm(self.project_conv, self.project_norm, x)
        else:
            x = inputs
            if self.expand_conv is not None:
                x = self.expand_norm_act(self.expand_conv(x), training=training)
            x, scale = self.norm_act(self.group_conv(x), training=training)
            x = self.se(x, scale=scale)
            x = self.project_norm(self.project_conv(x), training=training)
        if self.residual:
            x = drop_path(x, self.drop_rate, training, self.name) + inputs
        return x

    def get_config(self):
        config = super().get_config()
        config.update(self.config_args)
        return config


class Standardize(keras.layers.Layer):
    """Input preprocessing: pixels in [0, 255] -> (x / 255 - mean) / std per channel.

    ``mean`` and ``std`` are per-channel (RGB) in [0, 1] units; the defaults are
    ImageNet's. Input/output [N, H, W, 3] float.
    """

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        if any(s <= 0 for s in self.std):
            raise ValueError("Standardize std must be positive, got %r" % (std,))

    def call(self, inputs):
        mean = tf.constant(self.mean, inputs.dtype) * 255.0
        inv_std = 1.0 / (tf.constant(self.std, inputs.dtype) * 255.0)
        return (inputs - mean) * inv_std

    def get_config(self):
        config = super().get_config()
        config.update(dict(mean=self.mean, std=self.std))
        return config


class Dropout(keras.layers.Layer):
    """Dropout (Srivastava et al., 2014) before the classifier (keras.applications'
    ``top_dropout``): during training each element is zeroed with probability ``rate`` and
    the kept ones scaled by 1 / (1 - rate); the input itself otherwise. Any shape and
    float dtype. The draws are seeded by the layer's name within ``seeding.step_seed`` (the
    training loops), else stateful, as Keras' Dropout.

    Raises: ValueError if ``rate`` is outside [0, 1)."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError("Dropout rate must be in [0, 1), got %r" % (rate,))
        self.rate = float(rate)

    def call(self, inputs, training=None):
        if not training or self.rate <= 0:
            return inputs
        keep = tf.cast(seeding.uniform(tf.shape(inputs), self.name, inputs.dtype)
                       >= self.rate, inputs.dtype)
        return inputs * keep / (1.0 - self.rate)

    def get_config(self):
        config = super().get_config()
        config["rate"] = self.rate
        return config
