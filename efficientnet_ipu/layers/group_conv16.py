"""AVX2 CPU kernels for group convolutions with 16 channels per group (paper 001's G16).

On this project's AVX2 CPU, oneDNN runs 16-channel groups at 40-60 % of its dense
convolution's FLOP rate (issue #4). ``csrc/group_conv16.cc`` holds three TensorFlow ops
written for that case (forward, gradient with respect to the input, gradient with respect
to the kernel): each group is a 16 x 16 matrix per kernel tap, and a block of six output
pixels x 16 output channels stays in AVX2 registers. They compute ``tf.nn.conv2d`` on a
grouped kernel, up to float32 round-off.

They are part of this project's CPU op library (``kernels``: compiled on first use with
the machine's C++ compiler, cached, and kept out of SavedModels by
``kernels.portable_kernels()``).
"""
import tensorflow as tf

from efficientnet_ipu.layers import kernels


@tf.RegisterGradient("EfficientnetIpuGroupConv16")
def _gradient(op, grad):
    """Gradients of EfficientnetIpuGroupConv16 with respect to its input, kernel and input
    offset. The offset's is the input gradient summed over N, H and W: the input-gradient
    op sums each row over W as it writes it (its second output, [N, C]), which saved a
    65 ms TensorFlow reduction per training step of B0-G16-LN+PN at 224 px, batch 32, on
    this project's CPU (issue #4, session 7)."""
    x, kernel, offset = op.inputs
    stride, padding = op.get_attr("stride"), op.get_attr("padding")
    dx, dx_sum = kernels.load().efficientnet_ipu_group_conv16_backprop_input(
        tf.shape(x), kernel, grad, stride=stride, padding=padding)
    dkernel = kernels.load().efficientnet_ipu_group_conv16_backprop_filter(
        x, tf.shape(kernel), grad, offset, stride=stride, padding=padding)
    return dx, dkernel, tf.reduce_sum(dx_sum, axis=0)


def group_conv16(inputs, kernel, stride, padding, input_offset=None):
    """``tf.nn.conv2d(inputs + input_offset, kernel, stride, padding)`` for 16-channel
    groups, on the AVX2 kernels (compiled on first use, see ``kernels.load``). The offset is added
    while the kernels copy their input, so it costs no pass over ``inputs``.

    Args:
      inputs: float32 [N, H, W, C], C a multiple of 16.
      kernel: float32 [k, k, 16, C]; kernel[:, :, i, o] reads input channel
        (o // 16) * 16 + i (``tf.nn.conv2d``'s grouped layout with C / 16 groups).
      stride: int >= 1 (both spatial dimensions); padding: "SAME" or "VALID".
      input_offset: float32 [C] or None (zeros); added to the inputs, not to the zero
        padding.

    Returns:
      float32 [N, OH, OW, C], OH and OW as ``tf.nn.conv2d`` gives them.

    Raises:
      RuntimeError: see ``kernels.load``.
      tf.errors.InvalidArgumentError: shapes as above violated.
    """
    library = kernels.load("GroupConv2D implementation='avx2'",
                           "implementation='grouped' or 'split'")
    if input_offset is None:
        input_offset = tf.zeros(tf.shape(inputs)[-1:], inputs.dtype)
    return library.efficientnet_ipu_group_conv16(inputs, kernel, input_offset,
                                                 stride=int(stride), padding=padding)
