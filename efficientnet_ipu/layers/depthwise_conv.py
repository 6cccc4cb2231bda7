"""Depthwise convolution (paper 001's G1 group convolution) with this project's CPU
gradient kernels.

The forward is ``tf.nn.depthwise_conv2d`` (oneDNN's, which runs at about the speed of
memory here; but see ``route`` below); the gradients with respect to the input and to
the kernel are the two ops of ``csrc/depthwise_conv.cc`` (AVX2+FMA, kernels up to 7x7).
On this project's 2-core AVX-512 Xeon, oneDNN's depthwise gradients took 472 of B0-G1's
1689 ms of op time per training step at batch 32, 224 px, the kernel gradient 360 ms of
it (issue #4, session 16). They compute TensorFlow's gradients up to float32 round-off.

They are part of this project's CPU op library (``kernels``: compiled on first use with
the machine's C++ compiler, cached, and kept out of SavedModels by
``kernels.portable_kernels()``, under which the layer calls ``tf.nn.depthwise_conv2d``
alone).

With stride 1, "SAME" padding and an odd kernel, the input gradient is the forward
convolution of the output gradient with the kernel turned by 180 degrees, so either code
can run either pass, and ``route`` picks the faster one by the row width (issue #4,
session 20).
"""
import tensorflow as tf

from efficientnet_ipu.layers import kernels

MAX_KERNEL_SIZE = 7  # the largest kernel the gradient ops' register blocks hold

# Width limits of ``route``, measured on the AMD Zen 4 EPYC of issue #4 (session 20,
# batch 32, op time alone): where the k - 1 pixels at a row's ends (the pixels with taps
# in the padding) are at least this share of the row, oneDNN's direct convolution beats
# our input-gradient loops: 5x5 at 5, 7, 10 and 14 px 1.36x, 1.22x, 1.46-1.49x and
# 1.01-1.15x; 3x3 at 5 and 7 px 0.97x and 1.04x (a tie). Below it, ours beats oneDNN's
# forward: 3x3 at 10, 14, 40 and 56 px 1.42x, 1.09x, 1.21x and 1.20x; 5x5 at 20 and
# 28 px 1.03x and 1.07x; but not at 80 px (3x3, 32 channels: 0.94x), hence the widest
# row ours takes.
ENDS_SHARE_FOR_ONEDNN = 0.25
WIDEST_ROW_FOR_OUR_FORWARD = 56


def route(width, kernel_size, stride, padding):
    """Which code runs the two passes that are one convolution of a depthwise layer.

    Args:
      width: the input's width W in pixels (int), or None when it is not known when the
        layer is traced (then both passes keep their usual code).
      kernel_size: k (int); stride: int >= 1; padding: "SAME" or "VALID".

    Returns:
      (our_forward, onednn_input_gradient), two bools: the forward runs on our
      input-gradient op with the kernel turned by 180 degrees (instead of
      ``tf.nn.depthwise_conv2d``), or the input gradient runs on
      ``tf.nn.depthwise_conv2d`` of the output gradient with that kernel (instead of our
      op). At most one is True, and only for stride 1, "SAME" and an odd k >= 3, where
      both codes compute the same sums (up to float32 round-off); the limits above say
      where each is faster.
    """
    if width is None or stride != 1 or padding != "SAME" or kernel_size < 3 \
            or kernel_size % 2 == 0:
        return False, False
    mostly_ends = (kernel_size - 1) >= ENDS_SHARE_FOR_ONEDNN * width
    return (not mostly_ends and width <= WIDEST_ROW_FOR_OUR_FORWARD), mostly_ends


def depthwise_conv2d(inputs, kernel, stride, padding):
    """``tf.nn.depthwise_conv2d(inputs, kernel, [1, s, s, 1], padding)`` whose gradients
    run on this project's CPU kernels (compiled on first use, see ``kernels.load``).

    Args:
      inputs: float32 [N, H, W, C].
      kernel: float32 [k, k, C, 1], k <= ``MAX_KERNEL_SIZE`` (channel multiplier 1).
      stride: int >= 1 (both spatial dimensions); padding: "SAME" or "VALID".

    Returns:
      float32 [N, OH, OW, C], OH and OW as ``tf.nn.depthwise_conv2d`` gives them. For
      stride 1 and "SAME", ``route`` may run the forward on our op, or the input gradient
      on ``tf.nn.depthwise_conv2d``, whichever is faster at this width.

    Raises:
      RuntimeError: see ``kernels.load``.
      ValueError: a kernel larger than ``MAX_KERNEL_SIZE`` or with a channel multiplier
        other than 1.
    """
    size, multiplier = int(kernel.shape[0]), int(kernel.shape[3])
    if size > MAX_KERNEL_SIZE or multiplier != 1:
        raise ValueError("depthwise_conv2d: the CPU gradient kernels take kernels up to "
                         "%dx%d with channel multiplier 1, got %s"
                         % (MAX_KERNEL_SIZE, MAX_KERNEL_SIZE, kernel.shape))
    library = kernels.load("GroupConv2D implementation='avx2'", "implementation='tensorflow'")
    stride = int(stride)
    our_forward, onednn_input_gradient = route(inputs.shape[2], size, stride, padding)

    @tf.custom_gradient
    def convolve(x, w):
        def gradient(dy):
            if onednn_input_gradient:
                dx = tf.nn.depthwise_conv2d(dy, tf.reverse(w, [0, 1]), [1, 1, 1, 1], "SAME")
            else:
                dx = library.efficientnet_ipu_depthwise_conv_backprop_input(
                    tf.shape(x), w, dy, stride=stride, padding=padding)
            dw = library.efficientnet_ipu_depthwise_conv_backprop_filter(
                x, dy, kernel_size=size, stride=stride, padding=padding)
            return dx, dw
        if our_forward:
            y = library.efficientnet_ipu_depthwise_conv_backprop_input(
                tf.shape(x), tf.reverse(w, [0, 1]), x, stride=1, padding="SAME")
        else:
            y = tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], padding)
        return y, gradient

    return convolve(inputs, kernel)
