"""Batch-independent normalization: Group, Layer and Instance Normalization.

Paper 001 sec. 3.2 / eq. (3) and paper 002 sec. 4: LN normalizes each example over
(H, W, C), IN over (H, W) per channel, and GN over (H, W, C / groups) per group of
channels. LN is GN with 1 group; IN is GN with C groups. Statistics are computed in
float32 whatever the compute dtype (paper 002, Appendix A.1: float16 activations
"except in normalization steps"). Epsilon defaults to 1e-3 (paper 001 sec. 3.4).

Written with TensorFlow ops so it runs on Keras 3, tf-keras and the Keras 2.6 fork of
Graphcore's SDK (which has no GroupNormalization of its own).
"""
from tensorflow import keras
import tensorflow as tf

INSTANCE = -1  # ``groups`` value meaning one group per channel (Instance Normalization).


class GroupNormalization(keras.layers.Layer):
    """Group Normalization (Wu & He, 2018) on NHWC tensors.

    Args:
      groups: int >= 1, number of channel groups; 1 gives Layer Normalization and
        ``INSTANCE`` (-1) gives Instance Normalization. Must divide the channels.
      epsilon: float > 0 added to the variance.
      center, scale: whether to learn the per-channel shift beta / scale gamma.

    Input: [N, H, W, C] (or [N, C], treated as H = W = 1), any float dtype.
    Output: same shape and dtype.

    Raises:
      ValueError: ``groups`` is not a positive integer or -1, ``epsilon`` is not
        positive, or (at build time) ``groups`` does not divide the channels.
    """

    def __init__(self, groups=4, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
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

    def scale_shift(self, x):
        """Per-example, per-channel float32 (scale, shift), each [N, C], such that the
        output is x * scale + shift (the affine gamma/beta included). ``x``: [N, H, W, C].

        Statistics come from per-channel spatial means (contiguous reductions in NHWC),
        E[x^2] - E[x]^2 in float32."""
        channels = x.shape[-1]
        x32 = tf.cast(x, tf.float32)
        mean_c = tf.reduce_mean(x32, axis=[1, 2])                          # [N, C]
        square_c = tf.reduce_mean(tf.square(x32), axis=[1, 2])             # [N, C]
        mean_g = tf.reshape(mean_c, [-1, self.num_groups, channels // self.num_groups])
        square_g = tf.reshape(square_c, tf.shape(mean_g))
        mean = tf.reduce_mean(mean_g, axis=-1, keepdims=True)              # [N, G, 1]
        variance = tf.nn.relu(tf.reduce_mean(square_g, axis=-1, keepdims=True)
                              - tf.square(mean))
        spread = tf.zeros_like(mean_g)                                      # [N, G, C/G]
        scale = tf.reshape(tf.math.rsqrt(variance + self.epsilon) + spread, [-1, channels])
        mean = tf.reshape(mean + spread, [-1, channels])
        if self.gamma is not None:
            scale = scale * tf.cast(self.gamma, tf.float32)
        shift = -mean * scale
        if self.beta is not None:
            shift = shift + tf.cast(self.beta, tf.float32)
        return scale, shift

    def call(self, inputs):
        rank = len(inputs.shape)
        x = inputs if rank == 4 else inputs[:, None, None, :]
        scale, shift = self.scale_shift(x)
        y = x * tf.cast(scale, x.dtype)[:, None, None, :] + tf.cast(shift, x.dtype)[:, None,
                                                                                   None, :]
        return y if rank == 4 else y[:, 0, 0, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dict(groups=self.groups, epsilon=self.epsilon, center=self.center,
                           scale=self.scale))
        return config


def LayerNormalization(epsilon=1e-3, center=True, scale=True, **kwargs):
    """Layer Normalization over (H, W, C) of each example: GroupNormalization(groups=1)."""
    return GroupNormalization(groups=1, epsilon=epsilon, center=center, scale=scale, **kwargs)


def InstanceNormalization(epsilon=1e-3, center=True, scale=True, **kwargs):
    """Instance Normalization over (H, W) per channel: GroupNormalization(groups=-1)."""
    return GroupNormalization(groups=INSTANCE, epsilon=epsilon, center=center, scale=scale,
                              **kwargs)
