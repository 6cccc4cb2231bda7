"""The squeeze-excite gate ops (``csrc/channel_gate.cc``).

``channel_gate``: x * gate[n, c] with both gradients (dx = dy gate, dgate = sum_hw dy x)
from one pass, five passes over the tensor in TensorFlow. ``squeeze_excite``: the whole
gate with that op and a gradient that adds the squeeze's share, dm / (H W), to dx in place
(TensorFlow's gradient of the mean is a Tile and a Mul of the full tensor and an AddN).
"""
import tensorflow as tf

from efficientnet_ipu.kernels import dispatch, library

_USER, _ALTERNATIVE = "the squeeze-excite gate", "kernels='tensorflow'"


def channel_gate(x, gate, mode="auto", reference=None):
    """``reference(x, gate)``: x * gate[:, None, None, :] (x [N, H, W, C], gate [N, C], x's
    dtype), or the fused op computing it (where ``dispatch.norm_ops_apply``)."""
    if not dispatch.norm_ops_apply(x, None, mode):
        return reference(x, gate)
    return library.load(_USER, _ALTERNATIVE).efficientnet_ipu_channel_gate(x, gate)


@tf.RegisterGradient("EfficientnetIpuChannelGate")
def _channel_gate_gradient(op, dy):
    """dx and dgate of EfficientnetIpuChannelGate in one op."""
    return library.load().efficientnet_ipu_channel_gate_grad(*op.inputs, dy)


def squeeze_excite(x, gate_fn, params, mode="auto", reference=None):
    """``reference(x, gate_fn, params)``: (x * g[:, None, None, :], g) with the gate
    g = gate_fn(mean over H and W of x, *params); or the same values with this project's
    gradient (where ``dispatch.norm_ops_apply``): the gate's two gradients from one op,
    the [N, C] graph of ``gate_fn`` by TensorFlow (recomputed, it is tiny), and dm / (H W)
    added to dx in place by one op.

    Args:
      x: [N, H, W, C]; gate_fn: maps m [N, C] (x's dtype) and ``params`` to g [N, C];
      params: list of tensors, differentiated too; mode: the layer's ``kernels`` option.

    Returns:
      (y [N, H, W, C], g [N, C]); g may feed other ops, and its gradient from them joins
      the gate's.
    """
    params = list(params)
    if not dispatch.norm_ops_apply(x, None, mode):
        return reference(x, gate_fn, params)
    ops = library.load(_USER, _ALTERNATIVE)

    @tf.custom_gradient
    def fused(x, *params):
        params = list(params)
        squeezed = tf.reduce_mean(x, axis=[1, 2])
        gate = gate_fn(squeezed, *params)

        def gradient(dy, dgate_out):
            dx, dgate = ops.efficientnet_ipu_channel_gate_grad(x, gate, dy)
            if dgate_out is not None:
                dgate = dgate + dgate_out
            with tf.GradientTape() as tape:
                tape.watch([squeezed] + params)
                recomputed = gate_fn(squeezed, *params)
            grads = tape.gradient(recomputed, [squeezed] + params, output_gradients=dgate)
            pixels = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], x.dtype)
            dx = ops.efficientnet_ipu_add_channel_bias(dx, grads[0] / pixels)
            return [dx] + grads[1:]
        return (ops.efficientnet_ipu_channel_gate(x, gate), gate), gradient

    return fused(x, *params)
