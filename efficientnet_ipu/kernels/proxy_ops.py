"""The proxy-statistics op of a proxy-normalized activation (paper 002 eq. 7).

The proxy statistics are [n, C] tensors (n = 200 quantiles), so on a CPU their cost is
TensorFlow's per-op overhead, not arithmetic: about 35 small ops per layer, forward and
backward. ``csrc/proxy_norm.cc`` computes them as one op, and their gradient as another of
a few multiply-adds per channel: the forward op's third output holds the four means over
the quantiles that the gradient is linear in.
"""
import tensorflow as tf

from efficientnet_ipu.kernels import dispatch, library


def proxy_mean_scale(gamma, beta, proxy_gamma, proxy_beta, quantiles, activation, epsilon,
                     mode="auto", reference=None):
    """``reference()``: the proxy mean and rsqrt(proxy variance + eps~) of
    act(gamma * Y~ + beta), Y~ = q * (1 + proxy_gamma) + proxy_beta over the quantiles q;
    or the fused op computing them (where ``dispatch.proxy_op_applies``).

    Args:
      gamma, beta, proxy_gamma, proxy_beta: float32 [C]; quantiles: float32 [n], n >= 2;
      activation: its name; epsilon: eps~ > 0; mode: the layer's ``kernels`` option;
      reference: the layer's TensorFlow formulation (no arguments).

    Returns: (mean, scale), float32 [C] each.
    Raises: tf.errors.InvalidArgumentError on mismatched shapes (fused op).
    """
    if not dispatch.proxy_op_applies(activation, mode):
        return reference()
    ops = library.load("ProxyNormActivation", "kernels='tensorflow'")
    mean, scale, _ = ops.efficientnet_ipu_proxy_mean_scale(
        gamma, beta, proxy_gamma, proxy_beta, quantiles,
        activation=dispatch.FUSED_ACTIVATIONS[activation], epsilon=float(epsilon))
    return mean, scale


@tf.RegisterGradient("EfficientnetIpuProxyMeanScale")
def _proxy_mean_scale_gradient(op, grad_mean, grad_scale, unused_grad_sums):
    """Gradients with respect to gamma, beta, proxy_gamma, proxy_beta (none for the
    quantiles), in one op from the forward op's sums."""
    mean, scale, sums = op.outputs
    if grad_mean is None:
        grad_mean = tf.zeros_like(mean)
    if grad_scale is None:
        grad_scale = tf.zeros_like(scale)
    gamma, _, proxy_gamma, proxy_beta, _ = op.inputs
    grads = library.load().efficientnet_ipu_proxy_mean_scale_grad(
        gamma, proxy_gamma, proxy_beta, scale, sums, grad_mean, grad_scale)
    return list(grads) + [None]
