"""Normalization: Group, Layer, Instance and Batch Normalization.

Paper 001 sec. 3.2 / eq. (3) and paper 002 sec. 4: LN normalizes each example over
(H, W, C), IN over (H, W) per channel, and GN over (H, W, C / groups) per group of
channels. LN is GN with 1 group; IN is GN with C groups. Statistics are computed in
float32 whatever the compute dtype (paper 002, Appendix A.1: float16 activations
"except in normalization steps"). Epsilon defaults to 1e-3 (paper 001 sec. 3.4).

Each norm is computed as per-channel spatial moments (``channel_moments``), combined into
a per-example, per-channel scale and shift (``group_scale_shift``, gamma and beta
included), applied with the activation that follows in one step
(``scale_shift_activation``). Where this project's CPU ops compute a step faster, the step
goes through ``efficientnet_ipu.kernels`` with the function below as its reference.

Written with TensorFlow ops so it runs on Keras 3, tf-keras and the Keras 2.6 fork of
Graphcore's SDK (which has no GroupNormalization of its own).
"""
from tensorflow import keras
import tensorflow as tf

from efficientnet_ipu import kernels as kernels_lib  # ``kernels`` is also an argument

INSTANCE = -1  # ``groups`` value meaning one group per channel (Instance Normalization).
GROUPINGS = ("contiguous", "strided")  # GroupNormalization's channel groupings


def scale_shift_activation(x, scale, shift, activation="linear", activation_fn=None,
                           post=None, mode="auto"):
    """act(x * scale[:, None, None, :] + shift[:, None, None, :]): the end of GN, LN or IN
    (per-example statistics and the affine folded into ``scale`` and ``shift``) and the
    activation that follows it; with ``post`` = (post_scale, post_shift), that result
    times post_scale plus post_shift, per channel (proxy norm's (a - proxy mean) *
    proxy scale, paper 002 eq. 7, where no convolution follows to fold it into).

    The multiply and add run in float32 (paper 002, Appendix A.1: float16 activations
    except in normalization steps), then the activation and the post affine in x's dtype.

    Args:
      x: [N, H, W, C], any float dtype.
      scale, shift: float32 [N, C].
      activation: a name in ``proxy_norm.ACTIVATIONS``.
      activation_fn: the TensorFlow function for ``activation`` (None: "linear").
      post: None, or (post_scale, post_shift), float32 [C] each.
      mode: the layer's ``kernels`` option ("auto" or "tensorflow").

    Returns: [N, H, W, C] in x's dtype.
    """
    def reference(x, scale, shift, post):
        # In float32 whatever x's dtype (a float16 shift of about -mean rounds by up to
        # |mean| / 2048), then back to x's dtype for the activation.
        y = tf.cast(tf.cast(x, tf.float32) * scale[:, None, None, :]
                    + shift[:, None, None, :], x.dtype)
        y = y if activation_fn is None else activation_fn(y)
        if post:
            y = y * tf.cast(post[0], y.dtype) + tf.cast(post[1], y.dtype)
        return y
    return kernels_lib.scale_shift_activation(x, scale, shift, activation, post, mode,
                                          reference=reference)


@tf.custom_gradient
def channel_moments_reference(x):
    """Per-example, per-channel spatial mean and biased variance of float32 x
    [N, H, W, C]: (E_hw[x], E_hw[(x - E_hw[x])^2]), float32 [N, C] each. Two reductions
    over the centred x (accurate when |mean| >> std). The gradient,
    dx = (dmean + 2 (x - mean) dvariance) / (H W), is one broadcasting multiply-add;
    automatic differentiation would materialize both upstream gradients at full size
    first."""
    mean = tf.reduce_mean(x, axis=[1, 2])
    variance = tf.reduce_mean(tf.square(x - mean[:, None, None, :]), axis=[1, 2])

    def grad(dmean, dvariance):
        shape = tf.shape(x)
        inv_hw = 1.0 / tf.cast(shape[1] * shape[2], x.dtype)
        b = 2.0 * inv_hw * dvariance
        return x * b[:, None, None, :] + (inv_hw * dmean - mean * b)[:, None, None, :]
    return (mean, variance), grad


def channel_moments(x, mode="auto"):
    """``channel_moments_reference(x)`` (through ``kernels_lib.channel_moments``)."""
    return kernels_lib.channel_moments(x, mode, reference=channel_moments_reference)


def channel_moments_through(x, mode="auto"):
    """(mean, variance, x_through): ``channel_moments(x)`` and x itself. Apply the
    normalization to ``x_through`` (the same values), so that x has one consumer and the
    fused ops' gradients can join (``kernels.channel_moments_through``)."""
    return kernels_lib.channel_moments_through(x, mode, reference=channel_moments_reference)


def combine_moments(mean, variance, axis):
    """Mean and variance of the union of equally sized sets given each set's mean and
    (biased) variance, along ``axis`` (kept): E[var_i] + Var[mean_i], the parallel
    variance rule (Chan, Golub & LeVeque, 1979). float32 tensors of the same shape."""
    total_mean = tf.reduce_mean(mean, axis=axis, keepdims=True)
    spread = tf.square(mean - total_mean)
    return total_mean, tf.reduce_mean(variance + spread, axis=axis, keepdims=True)


def group_scale_shift_reference(mean, variance, gamma, beta, groups, epsilon, offset=None):
    """Group Normalization's per-example scale and shift from per-channel moments
    (paper 001 sec. 3.2, eq. 3): GN(x - offset) = x * scale + shift, gamma and beta
    included. For each example and group of C / groups channels, the group's mean M and
    biased variance V come from the channels' by ``combine_moments``; then
    scale = gamma / sqrt(V + epsilon) and shift = beta - (M + offset) * scale.

    Args:
      mean, variance: float32 [N, C], per-channel spatial moments of x (``channel_moments``).
      gamma, beta: float32 [C].
      groups: int >= 1 dividing C (LN: 1, IN: C).
      epsilon: float > 0.
      offset: None or float32 [N, C] (folds a proxy-norm mean through a 1x1 convolution).

    Returns: (scale, shift), float32 [N, C] each.
    """
    channels = mean.shape[-1]
    if offset is not None:
        mean = mean - offset              # a shift leaves each channel's variance
    mean_g = tf.reshape(mean, [-1, groups, channels // groups])
    variance_g = tf.reshape(variance, tf.shape(mean_g))
    mean, variance = combine_moments(mean_g, variance_g, axis=-1)       # [N, G, 1]
    spread = tf.zeros_like(mean_g)                                       # [N, G, C/G]
    scale = tf.reshape(tf.math.rsqrt(variance + epsilon) + spread, [-1, channels]) * gamma
    mean = tf.reshape(mean + spread, [-1, channels])
    if offset is not None:
        mean = mean + offset
    return scale, beta - mean * scale


def group_scale_shift(mean, variance, gamma, beta, groups, epsilon, offset=None,
                      mode="auto"):
    """``group_scale_shift_reference`` (through ``kernels_lib.group_scale_shift``)."""
    return kernels_lib.group_scale_shift(mean, variance, gamma, beta, groups, epsilon, offset,
                                     mode, reference=group_scale_shift_reference)


def batch_norm_statistics_reference(mean, variance, gamma, beta, moving_mean,
                                    moving_variance, momentum, epsilon):
    """Batch Normalization's per-channel scale and shift in training, and its updated
    moving averages, from per-example moments (Ioffe & Szegedy, 2015, Algorithm 1; the
    batch's moments by ``combine_moments`` over the examples): with the batch's mean M and
    biased variance V, scale = gamma / sqrt(V + epsilon), shift = beta - M scale, so that
    BN(x) = x scale + shift; new moving = momentum moving + (1 - momentum) batch, Keras'
    rule with the biased V (as Keras 3 keeps it). The moving averages are not
    differentiated.

    Args:
      mean, variance: float32 [N, C], per-channel spatial moments of x (``channel_moments``).
      gamma, beta, moving_mean, moving_variance: float32 [C].
      momentum: float in [0, 1]; epsilon: float > 0.

    Returns: (scale, shift, new_moving_mean, new_moving_variance), float32 [C] each.
    """
    batch_mean, batch_variance = combine_moments(mean, variance, axis=0)
    batch_mean, batch_variance = batch_mean[0], batch_variance[0]
    scale = gamma * tf.math.rsqrt(batch_variance + epsilon)
    return (scale, beta - batch_mean * scale,
            moving_average(moving_mean, tf.stop_gradient(batch_mean), momentum),
            moving_average(moving_variance, tf.stop_gradient(batch_variance), momentum))


def batch_norm_statistics(mean, variance, gamma, beta, moving_mean, moving_variance,
                          momentum, epsilon, mode="auto"):
    """``batch_norm_statistics_reference`` (through ``kernels_lib.batch_norm_statistics``)."""
    return kernels_lib.batch_norm_statistics(mean, variance, gamma, beta, moving_mean,
                                         moving_variance, momentum, epsilon, mode,
                                         reference=batch_norm_statistics_reference)


def moving_average(moving, batch, momentum):
    """Keras' moving-average rule: momentum * moving + (1 - momentum) * batch (float32
    tensors of one shape, momentum a float)."""
    return moving * momentum + batch * (1.0 - momentum)


def gamma_beta(layer, channels):
    """A normalization layer's float32 gamma and beta, [C] each (ones / zeros where the
    layer has none: its ``scale`` / ``center`` is False)."""
    gamma = tf.cast(layer.gamma, tf.float32) if layer.scale else tf.ones([channels])
    beta = tf.cast(layer.beta, tf.float32) if layer.center else tf.zeros([channels])
    return gamma, beta


class GroupNormalization(keras.layers.Layer):
    """Group Normalization (Wu & He, 2018) on NHWC tensors.

    Args:
      groups: int >= 1, number of channel groups; 1 gives Layer Normalization and
        ``INSTANCE`` (-1) gives Instance Normalization. Must divide the channels.
      epsilon: float > 0 added to the variance.
      center, scale: whether to learn the per-channel shift beta / scale gamma.
      grouping: which channels form a group: "contiguous" (channels [g C/G, (g+1) C/G),
        as Wu & He and most libraries) or "strided" (channel c in group c mod G, as
        Graphcore's IPU GroupNorm, so that weights trained there load here).
      kernels: "auto" (this project's CPU ops where they apply) or "tensorflow"; the same
        function either way (``efficientnet_ipu.kernels``).

    Input: [N, H, W, C] (or [N, C], treated as H = W = 1), any float dtype.
    Output: same shape and dtype.

    Raises:
      ValueError: ``groups`` is not a positive integer or -1, ``epsilon`` is not
        positive, ``grouping`` or ``kernels`` unknown, or (at build time) ``groups`` does
        not divide the channels.
    """

    def __init__(self, groups=4, epsilon=1e-3, center=True, scale=True,
                 grouping="contiguous", kernels="auto", **kwargs):
        super().__init__(**kwargs)
        self.kernels = kernels_lib.check_mode(kernels, "GroupNormalization kernels")
        if grouping not in GROUPINGS:
            raise ValueError("GroupNormalization grouping must be one of %s, got %r"
                             % (GROUPINGS, grouping))
        self.grouping = grouping
        if not isinstance(groups, int) or (groups < 1 and groups != INSTANCE):
            raise ValueError("GroupNormalization groups must be a positive integer or -1 "
                             "(instance norm), got %r" % (groups,))
        if not epsilon > 0:
            raise ValueError("GroupNormalization epsilon must be > 0, got %r" % (epsilon,))
        self.groups = groups
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale

    def build(self, input_shape):
        channels = int(input_shape[-1])
        groups = channels if self.groups == INSTANCE else self.groups
        if channels % groups:
            raise ValueError("GroupNormalization groups=%d does not divide the %d channels"
                             % (groups, channels))
        self.num_groups = groups
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones",
                                     trainable=True) if self.scale else None
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros",
                                    trainable=True) if self.center else None
        super().build(input_shape)

    def scale_shift(self, x, offset=None, affine=None):
        """Per-example, per-channel float32 (scale, shift), each [N, C], such that the
        output is x * scale + shift (the affine gamma/beta included). ``x``: [N, H, W, C].

        Statistics come from per-channel spatial means and variances
        (``channel_moments``), combined over each group's channels
        (``group_scale_shift``). ``offset`` (optional, float32 [N, C]): normalize
        x - offset instead of x, with the offset folded into the statistics and the shift
        (no pass over x; used to fold a proxy-norm mean through a 1x1 convolution).
        ``affine`` (optional, float32 (gamma, beta), [C] each): use these instead of the
        layer's own (proxy norm's affine, which follows a norm without one)."""
        mean, variance = channel_moments(tf.cast(x, tf.float32), self.kernels)  # [N, C] each
        return self._from_moments(mean, variance, x.shape[-1], offset, affine)

    def scale_shift_through(self, x, offset=None, affine=None):
        """``scale_shift``'s (scale, shift) and x itself, x_through
        (``channel_moments_through``): apply scale and shift to x_through."""
        mean, variance, x_through = channel_moments_through(tf.cast(x, tf.float32),
                                                             self.kernels)
        return self._from_moments(mean, variance, x.shape[-1], offset, affine) + (
            tf.cast(x_through, x.dtype),)

    def _from_moments(self, mean, variance, channels, offset, affine):
        gamma, beta = affine if affine is not None else gamma_beta(self, channels)
        groups = self.num_groups
        if self.grouping == "strided" and 1 < groups < channels:
            # Channel c is in group c mod G: order the channels group by group, normalize
            # contiguous groups, and put the per-channel scale and shift back in order.
            def to_groups(t):  # [N, C] or [C]
                shape = [-1, channels] if len(t.shape) == 2 else [channels]
                t = tf.reshape(t, [-1, channels // groups, groups])
                return tf.reshape(tf.transpose(t, [0, 2, 1]), shape)

            def from_groups(t):
                t = tf.reshape(t, [-1, groups, channels // groups])
                return tf.reshape(tf.transpose(t, [0, 2, 1]), [-1, channels])
            scale, shift = group_scale_shift(
                to_groups(mean), to_groups(variance), to_groups(gamma), to_groups(beta),
                groups, self.epsilon, None if offset is None else to_groups(offset),
                self.kernels)
            return from_groups(scale), from_groups(shift)
        return group_scale_shift(mean, variance, gamma, beta, self.num_groups,
                                 self.epsilon, offset, self.kernels)

    def call(self, inputs, offset=None):
        """Normalize ``inputs`` ([N, H, W, C] or [N, C]); with ``offset`` (float32 [N, C])
        the result equals normalizing inputs - offset[:, None, None, :]."""
        rank = len(inputs.shape)
        x = inputs if rank == 4 else inputs[:, None, None, :]
        scale, shift, x = self.scale_shift_through(x, offset)
        y = scale_shift_activation(x, scale, shift, mode=self.kernels)
        return y if rank == 4 else y[:, 0, 0, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dict(groups=self.groups, epsilon=self.epsilon, center=self.center,
                           scale=self.scale, grouping=self.grouping, kernels=self.kernels))
        return config


_KERAS3 = str(getattr(keras, "__version__", "2")).startswith("3")


class BatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization (Ioffe & Szegedy, 2015) computed, for 4-D NHWC
    inputs in training, as per-example moments, ``batch_norm_statistics`` and one
    scale-and-shift pass (``normalize_activate``) where this project's CPU ops compute them,
    else with TensorFlow's fused kernel (``FusedBatchNormV3``; the choice is
    ``kernels.batch_norm_activation``'s).

    Keras 3 computes training-mode batch norm as separate moments, scale and shift ops
    (slower than either); Keras 2 (tf-keras and
    Graphcore's fork) already uses the fused kernel, so there this class is Keras' own.
    Inference is a scale-and-shift, as in Keras.
    Same weights (gamma, beta, moving_mean, moving_variance), same arguments, same result
    up to float round-off; the moving variance is updated with the biased batch variance,
    as Keras 3 does. Inputs of other ranks, masks, renorm or another axis use Keras' code.

    Input/output: [N, H, W, C], any float dtype (statistics in float32).

    ``scale_shift`` gives the same normalization as per-channel (scale, shift), for
    NormActivation to apply together with the activation (``scale_shift_activation``).
    ``kernels``: "auto" or "tensorflow" (``efficientnet_ipu.kernels``); the same function.
    """

    def __init__(self, kernels="auto", **kwargs):
        super().__init__(**kwargs)
        self.kernels = kernels_lib.check_mode(kernels, "BatchNormalization kernels")

    def get_config(self):
        config = super().get_config()
        config["kernels"] = self.kernels
        return config

    def fusable(self, inputs):
        """True if ``scale_shift`` applies: Keras 3, 4-D NHWC inputs, no renorm."""
        axis = self.axis if isinstance(self.axis, int) else None
        return (_KERAS3 and not self.renorm and len(inputs.shape) == 4
                and axis in (3, -1))

    def scale_shift(self, inputs, training=None):
        """Float32 (scale, shift), [C] each, such that the batch norm of ``inputs``
        ([N, H, W, C]) is inputs * scale + shift, gamma and beta included.

        Training (``training`` and the layer trainable): the batch's statistics over
        (N, H, W), from the per-example ``channel_moments``, and
        the moving averages updated with the biased variance as in ``call``. Otherwise the
        moving statistics. Raises ValueError where ``fusable`` is False."""
        return self._scale_shift(inputs, training, through=False)[:2]

    def scale_shift_through(self, inputs, training=None):
        """``scale_shift``'s (scale, shift) and inputs itself, x_through
        (``channel_moments_through``; inputs as they are outside training): apply scale
        and shift to x_through."""
        return self._scale_shift(inputs, training, through=True)

    def normalize_activate(self, inputs, training=None, activation="linear",
                           activation_fn=None):
        """act(BN(inputs)) as ``scale_shift_through`` and one ``scale_shift_activation``,
        with the batch statistics from ``batch_norm_statistics``. Input [N, H, W, C];
        output float32 [N, H, W, C]. ``activation``: a name in ``proxy_norm.ACTIVATIONS``,
        ``activation_fn`` its function."""
        scale, shift, inputs = self.scale_shift_through(inputs, training)
        batch = tf.shape(inputs)[:1]
        return scale_shift_activation(
            inputs, tf.broadcast_to(scale, tf.concat([batch, tf.shape(scale)], 0)),
            tf.broadcast_to(shift, tf.concat([batch, tf.shape(shift)], 0)),
            activation, activation_fn, mode=self.kernels)

    def _scale_shift(self, inputs, training, through):
        if not self.fusable(inputs):
            raise ValueError("BatchNormalization.scale_shift needs Keras 3, 4-D NHWC inputs "
                             "(axis -1) and renorm=False")
        gamma, beta = gamma_beta(self, inputs.shape[-1])
        x_through = inputs
        if training and self.trainable:
            x = tf.cast(inputs, tf.float32)
            if through:
                mean_c, variance_c, x_through = channel_moments_through(x, self.kernels)
                x_through = tf.cast(x_through, inputs.dtype)
            else:
                mean_c, variance_c = channel_moments(x, self.kernels)
            scale, shift, moving_mean, moving_variance = batch_norm_statistics(
                mean_c, variance_c, gamma, beta, tf.cast(self.moving_mean, tf.float32),
                tf.cast(self.moving_variance, tf.float32), self.momentum, self.epsilon,
                self.kernels)
            self.moving_mean.assign(tf.cast(moving_mean, self.moving_mean.dtype))
            self.moving_variance.assign(tf.cast(moving_variance, self.moving_variance.dtype))
            return scale, shift, x_through
        mean = tf.cast(self.moving_mean, tf.float32)
        variance = tf.cast(self.moving_variance, tf.float32)
        scale = gamma * tf.math.rsqrt(variance + self.epsilon)
        return scale, beta - mean * scale, x_through

    def inference_scale_shift(self, channels):
        """Float32 (scale, shift), [C] each: the inference-mode batch norm of x is
        x * scale + shift, scale = gamma * rsqrt(moving_variance + epsilon), shift =
        beta - moving_mean * scale (gamma, beta: 1, 0 where the layer has none). Keras 2
        and 3 alike; ``channels``: C."""
        gamma, beta = gamma_beta(self, channels)
        scale = gamma * tf.math.rsqrt(tf.cast(self.moving_variance, tf.float32)
                                      + self.epsilon)
        return scale, beta - tf.cast(self.moving_mean, tf.float32) * scale

    def _update_moving_averages(self, mean, variance):
        """Moving averages with this batch's float32 mean and biased variance, [C]."""
        self.moving_mean.assign(moving_average(tf.cast(self.moving_mean, tf.float32), mean,
                                               self.momentum))
        self.moving_variance.assign(moving_average(
            tf.cast(self.moving_variance, tf.float32), variance, self.momentum))

    def _train_with_fused_kernel(self, x):
        """Training-mode BN of x [N, H, W, C] with TensorFlow's fused kernel, updating the
        moving averages; float32 [N, H, W, C]."""
        gamma, beta = gamma_beta(self, x.shape[-1])
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, is_training=True)
        # fused_batch_norm returns the unbiased (n / (n - 1)) variance; Keras 3 keeps
        # the biased one in its moving average.
        shape = tf.shape(x)
        n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        variance = variance * ((n - 1.0) / tf.maximum(n, 1.0))
        self._update_moving_averages(mean, variance)
        return y

    def call(self, inputs, training=None, mask=None):
        if mask is not None or not self.fusable(inputs):
            if mask is None:
                return super().call(inputs, training=training)
            return super().call(inputs, training=training, mask=mask)
        x = inputs if inputs.dtype in (tf.float16, tf.bfloat16, tf.float32) else tf.cast(
            inputs, tf.float32)
        if training and self.trainable:
            y = kernels_lib.batch_norm_activation(
                x, "linear", self.kernels,
                composed=lambda: self.normalize_activate(x, training),
                reference=lambda: self._train_with_fused_kernel(x))
        else:
            # Inference stays a plain scale-and-shift, as in Keras: TensorFlow's graph
            # optimizer would fuse a fused_batch_norm into the preceding convolution, and
            # that oneDNN kernel makes batch-1 latency many times longer on CPU.
            scale, shift = self.scale_shift(x, training=False)
            y = tf.cast(x, tf.float32) * scale + shift   # float32, as Keras computes it
        return tf.cast(y, self.compute_dtype)


def LayerNormalization(epsilon=1e-3, center=True, scale=True, **kwargs):
    """Layer Normalization over (H, W, C) of each example: GroupNormalization(groups=1)."""
    return GroupNormalization(groups=1, epsilon=epsilon, center=center, scale=scale, **kwargs)


def InstanceNormalization(epsilon=1e-3, center=True, scale=True, **kwargs):
    """Instance Normalization over (H, W) per channel: GroupNormalization(groups=-1)."""
    return GroupNormalization(groups=INSTANCE, epsilon=epsilon, center=center, scale=scale,
                              **kwargs)
