"""AVX2 CPU kernels for group convolutions with 16 channels per group (paper 001's G16).

On this project's AVX2 CPU, oneDNN runs 16-channel groups at 40-60 % of its dense
convolution's FLOP rate (issue #4). ``csrc/group_conv16.cc`` holds three TensorFlow ops
written for that case (forward, gradient with respect to the input, gradient with respect
to the kernel): each group is a 16 x 16 matrix per kernel tap, and a block of six output
pixels x 16 output channels stays in AVX2 registers. On a CPU with AVX-512F the inner
blocks use AVX-512 instead (one register per pixel, up to fourteen pixels per block; set
$EFFICIENTNET_IPU_AVX2_ONLY=1 before the ops are first run to keep AVX2): 1.20x (forward),
1.17x (input gradient) and 1.34x (kernel gradient) the AVX2 blocks on [32, 28, 28, 240]
3x3 on a 2-core AVX-512 Xeon (issue #4, session 11; session 13 made the AVX-512 path
another 1.09-1.23x faster, session 14 1.04-1.27x in the kernel gradient and up to 1.1x
in the forward and input gradient by prefetching the next planes from inside the
blocks). With AVX-512, 3x3 kernels at stride 1 with SAME padding run the forward and the
input gradient as Winograd F(2x2, 3x3) (Lavin and Gray, CVPR 2016, arXiv:1509.09308) on
images of at least 100 pixels, and the kernel gradient as the same algorithm read
backwards on images of at least 400 pixels: 2.25x fewer multiply-adds; 1.34x (forward),
1.46x (input gradient) and 1.08x (kernel gradient) the direct blocks on
[32, 28, 28, 240] (issue #4, session 15); set
$EFFICIENTNET_IPU_WINOGRAD=0 before the ops are first run to keep the direct blocks.
5x5 kernels at stride 1 with SAME padding run the forward and the input gradient as
Winograd F(2x2, 5x5) on images of at least 100 pixels (2.8x fewer multiply-adds; over the
direct blocks 1.41-1.59x at 14-28 px, issue #4 session 20, and 1.20-1.21x for a 10 px
layer's forward and backward, session 21).
They compute ``tf.nn.conv2d`` on a grouped kernel, up to float32 round-off (Winograd's
results differ from the direct sums by about 5e-7 of the largest output).

They are part of this project's CPU op library (``kernels``: compiled on first use with
the machine's C++ compiler, cached, and kept out of SavedModels by
``kernels.portable_kernels()``).
"""
import tensorflow as tf

from efficientnet_ipu.layers import kernels


@tf.RegisterGradient("EfficientnetIpuGroupConv16")
def _gradient(op, grad):
    """Gradients of EfficientnetIpuGroupConv16 with respect to its input, kernel, input
    offset and input scale. The offset's is the input gradient summed over N, H and W: the
    input-gradient op sums each row over W as it writes it (its second output, [N, C]),
    which saved a 65 ms TensorFlow reduction per training step of B0-G16-LN+PN at 224 px,
    batch 32, on this project's CPU (issue #4, session 7). The scale's is the kernel
    gradient op's second output (issue #4, session 11)."""
    x, kernel, offset, scale = op.inputs
    stride, padding = op.get_attr("stride"), op.get_attr("padding")
    library = kernels.load()
    dx, dx_sum = library.efficientnet_ipu_group_conv16_backprop_input(
        tf.shape(x), kernel, grad, scale, stride=stride, padding=padding)
    dkernel, dscale = library.efficientnet_ipu_group_conv16_backprop_filter(
        x, kernel, grad, offset, scale, stride=stride, padding=padding)
    return dx, dkernel, tf.reduce_sum(dx_sum, axis=0), dscale


def group_conv16(inputs, kernel, stride, padding, input_offset=None, input_scale=None):
    """``tf.nn.conv2d((inputs + input_offset) * input_scale, kernel, stride, padding)`` for
    16-channel groups, on the AVX2 kernels (compiled on first use, see ``kernels.load``).
    The offset is added while the kernels copy their input and the scale is multiplied
    into the kernel as they pack it, so neither costs a pass over ``inputs`` nor an op of
    its own (paper 002 eq. 7's proxy-normalized activation, folded into the convolution).

    Args:
      inputs: float32 [N, H, W, C], C a multiple of 16.
      kernel: float32 [k, k, 16, C]; kernel[:, :, i, o] reads input channel
        (o // 16) * 16 + i (``tf.nn.conv2d``'s grouped layout with C / 16 groups).
      stride: int >= 1 (both spatial dimensions); padding: "SAME" or "VALID".
      input_offset: float32 [C] or None (zeros); added to the inputs, not to the zero
        padding.
      input_scale: float32 [C] or None (ones); multiplies input channel c.

    Returns:
      float32 [N, OH, OW, C], OH and OW as ``tf.nn.conv2d`` gives them.

    Raises:
      RuntimeError: see ``kernels.load``.
      tf.errors.InvalidArgumentError: shapes as above violated.
    """
    library = kernels.load("GroupConv2D implementation='avx2'",
                           "implementation='grouped' or 'split'")
    channels = tf.shape(inputs)[-1:]
    if input_offset is None:
        input_offset = tf.zeros(channels, inputs.dtype)
    if input_scale is None:
        input_scale = tf.ones(channels, inputs.dtype)
    return library.efficientnet_ipu_group_conv16(inputs, kernel, input_offset, input_scale,
                                                 stride=int(stride), padding=padding)
