"""The MBConv block under GN/LN/IN + proxy norm with the proxy means and scales folded
into the linear layers around them (paper 002 eq. 7, rearranged).

An algebraic identity, not a kernel: the same function as the plain composition up to
float round-off, with fewer passes over the expanded activations. With a the activation
act(gamma * norm(x) + beta), m the proxy mean and s the proxy 1/std of a layer:

- expand: (a - m1) s1 -> group conv  ==  (a - m1) -> group conv with its kernel's input
  channels scaled by s1 (``GroupConv2D``'s ``input_offset`` and ``input_scale``, which
  this project's G16 ops take while they copy their input and pack their kernel);
- group conv: (a - m2) gated by squeeze-excite with scale s2 -> 1x1 project conv -> norm
  ==  a * g -> project conv -> norm of (that - (m2 g) W), where g is the gate of a - m2
  times s2 and W the project kernel; the [N, C_out] offset (m2 g) W is folded into the
  norm's statistics and shift (``GroupNormalization``'s ``offset``).

This saves four full-size passes over the expanded activations per block, five where the
group conv takes the expand mean as it copies its input.
"""
import tensorflow as tf


def mbconv_branch(block, inputs):
    """The residual branch of ``block`` (an ``MBConvBlock`` under GN/LN/IN + PN) on
    ``inputs`` [N, H, W, filters_in], folded as above, before stochastic depth and the
    residual: [N, H / s, W / s, filters_out]."""
    x, input_scale, input_offset = inputs, None, None
    if block.expand_conv is not None:
        x, mean, input_scale = block.expand_norm_act.proxy_parts(block.expand_conv(x))
        input_offset = -mean
    activated, mean, scale = block.norm_act.proxy_parts(
        block.group_conv(x, input_scale=input_scale, input_offset=input_offset))
    gated, gate = block.se.gated(activated, scale=scale, center=mean)   # gate [N, C]
    x = block.project_conv(gated)
    project_kernel = block.project_conv.kernel_matrix(tf.float32)       # [C, C_out]
    offset = tf.matmul(tf.cast(gate, tf.float32) * mean, project_kernel)   # [N, C_out]
    return block.project_norm(x, offset=offset)
