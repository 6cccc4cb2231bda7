"""The normalization ops: scale-shift-activation, per-channel moments, and the group and
batch statistics, with their gradients.

Each door function runs the layer's own TensorFlow formulation (its ``reference``) unless
``dispatch.norm_ops_apply`` (or ``statistics_ops_apply``) says the fused op runs here:

- ``scale_shift_activation``: act(x * scale + shift) with per-example, per-channel scale
  and shift (the end of GN/LN/IN and the activation after it), optionally times a
  per-channel post scale plus a post shift (proxy norm's), one pass over x forward and one
  backward (``csrc/norm_activation.cc``);
- ``channel_moments`` / ``channel_moments_through``: per-example, per-channel spatial
  mean and biased variance, one pass (``csrc/norm_activation.cc``); the "through" form
  also passes x on, so that the gradient reaching the normalized x joins the moments' own
  in one op;
- ``group_scale_shift``: GN/LN/IN's per-example scale and shift from those moments, one
  op forward and one backward instead of about 20 and 30 small ones
  (``csrc/group_statistics.cc``);
- ``batch_norm_statistics``: BN's scale, shift and moving averages from per-example
  moments (``csrc/group_statistics.cc``).
"""
import tensorflow as tf

from efficientnet_ipu.kernels import dispatch, library

_USER, _ALTERNATIVE = "the normalization ops", "kernels='tensorflow'"


def scale_shift_activation(x, scale, shift, activation="linear", post=None, mode="auto",
                           reference=None):
    """``reference(x, scale, shift, post)``: act(x * scale[:, None, None, :] +
    shift[:, None, None, :]) [* post_scale + post_shift], or the fused op computing it.

    Args:
      x: [N, H, W, C]; scale, shift: float32 [N, C]; activation: its name;
      post: None or (post_scale, post_shift), float32 [C] each;
      mode: the layer's ``kernels`` option; reference: the layer's TensorFlow formulation.

    Returns: [N, H, W, C] in x's dtype.
    Raises: tf.errors.InvalidArgumentError on mismatched shapes (fused op).
    """
    if not dispatch.norm_ops_apply(x, activation, mode):
        return reference(x, scale, shift, post)
    return library.load(_USER, _ALTERNATIVE).efficientnet_ipu_scale_shift_activation(
        x, scale, shift, [] if post is None else list(post),
        activation=dispatch.FUSED_ACTIVATIONS[activation])


@tf.RegisterGradient("EfficientnetIpuScaleShiftActivation")
def _scale_shift_activation_gradient(op, dy):
    """dx, dscale, dshift (and dpost_scale, dpost_shift) in one op."""
    x, scale, shift = op.inputs[:3]
    dx, dscale, dshift, dpost = library.load().efficientnet_ipu_scale_shift_activation_grad(
        x, scale, shift, list(op.inputs[3:]), dy, activation=op.get_attr("activation"))
    return [dx, dscale, dshift] + list(dpost)


def channel_moments(x, mode="auto", reference=None):
    """``reference(x)``: per-example, per-channel spatial (mean, biased variance), float32
    [N, C] each, of float32 x [N, H, W, C]; or the fused op computing it."""
    if not dispatch.norm_ops_apply(x, None, mode):
        return reference(x)
    return library.load(_USER, _ALTERNATIVE).efficientnet_ipu_channel_moments(x)


def channel_moments_through(x, mode="auto", reference=None):
    """``channel_moments`` and x itself: (mean, variance, x_through). Give ``x_through``
    (the same values) to the op that normalizes x with these moments: where the fused op
    runs, the gradient reaching x_through joins the moments' own in one op (written in
    place) instead of a second full-size gradient and an AddN. Elsewhere x_through is x."""
    if not dispatch.norm_ops_apply(x, None, mode):
        mean, variance = reference(x)
        return mean, variance, x
    return library.load(_USER, _ALTERNATIVE).efficientnet_ipu_channel_moments_through(x)


@tf.RegisterGradient("EfficientnetIpuChannelMoments")
def _channel_moments_gradient(op, dmean, dvariance, dthrough=None):
    """dx = (dmean + 2 (x - mean) dvariance) / (H W), plus the gradient reaching
    ``x_through``, in one op (a missing upstream gradient is 0)."""
    x, mean = op.inputs[0], op.outputs[0]
    dmean = tf.zeros_like(mean) if dmean is None else dmean
    dvariance = tf.zeros_like(op.outputs[1]) if dvariance is None else dvariance
    return library.load().efficientnet_ipu_channel_moments_grad(
        x, mean, dmean, dvariance, [] if dthrough is None else [dthrough])


tf.RegisterGradient("EfficientnetIpuChannelMomentsThrough")(_channel_moments_gradient)


def group_scale_shift(mean, variance, gamma, beta, groups, epsilon, offset=None,
                      mode="auto", reference=None):
    """``reference(mean, variance, gamma, beta, groups, epsilon, offset)``: GN's
    per-example (scale, shift), float32 [N, C] each, from per-channel moments; or the
    fused op computing it.

    Args: mean, variance: float32 [N, C]; gamma, beta: float32 [C]; groups: int dividing
    C; epsilon: float > 0; offset: None or float32 [N, C]; mode, reference: as above.
    Raises: tf.errors.InvalidArgumentError on mismatched shapes (fused op).
    """
    if not dispatch.statistics_ops_apply(mode):
        return reference(mean, variance, gamma, beta, groups, epsilon, offset)
    return library.load(_USER, _ALTERNATIVE).efficientnet_ipu_group_scale_shift(
        mean, variance, gamma, beta, [] if offset is None else [offset],
        groups=int(groups), epsilon=float(epsilon))


@tf.RegisterGradient("EfficientnetIpuGroupScaleShift")
def _group_scale_shift_gradient(op, dscale, dshift):
    """dmean, dvariance, dgamma, dbeta (and doffset) in one op (a missing upstream
    gradient is 0)."""
    dscale = tf.zeros_like(op.outputs[0]) if dscale is None else dscale
    dshift = tf.zeros_like(op.outputs[1]) if dshift is None else dshift
    grads = library.load().efficientnet_ipu_group_scale_shift_grad(
        *op.inputs[:4], list(op.inputs[4:]), dscale, dshift, groups=op.get_attr("groups"),
        epsilon=op.get_attr("epsilon"))
    return list(grads[:4]) + list(grads[4])


def batch_norm_activation(x, activation, mode, composed, reference):
    """act(BN(x)) for x [N, H, W, C]: ``composed()``, the layer's composition of the steps
    above (moments, ``batch_norm_statistics``, ``scale_shift_activation``), where this
    project's ops compute them for x and ``activation`` (``dispatch.norm_ops_apply``);
    else ``reference()``, the layer's formulation on TensorFlow's fused batch-norm kernel.
    Both compute the same function and update the same moving averages."""
    if dispatch.norm_ops_apply(x, activation, mode):
        return composed()
    return reference()


def batch_norm_statistics(mean, variance, gamma, beta, moving_mean, moving_variance,
                          momentum, epsilon, mode="auto", reference=None):
    """``reference(...)`` with the same arguments: BN's training (scale, shift,
    new_moving_mean, new_moving_variance), float32 [C] each, from per-example moments
    [N, C]; or the fused op computing it. The moving averages are not differentiated.

    Raises: tf.errors.InvalidArgumentError on mismatched shapes (fused op).
    """
    if not dispatch.statistics_ops_apply(mode):
        return reference(mean, variance, gamma, beta, moving_mean, moving_variance,
                         momentum, epsilon)
    return library.load(_USER, _ALTERNATIVE).efficientnet_ipu_batch_norm_statistics(
        mean, variance, gamma, beta, moving_mean, moving_variance,
        epsilon=float(epsilon), momentum=float(momentum))


@tf.RegisterGradient("EfficientnetIpuBatchNormStatistics")
def _batch_norm_statistics_gradient(op, dscale, dshift, *_):
    """dmean, dvariance, dgamma, dbeta in one op (a missing upstream gradient is 0); none
    for the moving averages."""
    dscale = tf.zeros_like(op.outputs[0]) if dscale is None else dscale
    dshift = tf.zeros_like(op.outputs[1]) if dshift is None else dshift
    dmean, dvariance, dgamma, dbeta = library.load(
        ).efficientnet_ipu_batch_norm_statistics_grad(
        *op.inputs[:3], dscale, dshift, epsilon=op.get_attr("epsilon"))
    return [dmean, dvariance, dgamma, dbeta, None, None]
