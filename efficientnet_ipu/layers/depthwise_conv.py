"""Depthwise convolution (paper 001's G1 group convolution) with this project's CPU
gradient kernels.

The forward is ``tf.nn.depthwise_conv2d`` (oneDNN's, which runs at about the speed of
memory here); the gradients with respect to the input and to the kernel are the two ops
of ``csrc/depthwise_conv.cc`` (AVX2+FMA, kernels up to 7x7). On this project's 2-core
AVX-512 Xeon, oneDNN's depthwise gradients took 472 of B0-G1's 1689 ms of op time per
training step at batch 32, 224 px, the kernel gradient 360 ms of it (issue #4,
session 16). They compute TensorFlow's gradients up to float32 round-off.

They are part of this project's CPU op library (``kernels``: compiled on first use with
the machine's C++ compiler, cached, and kept out of SavedModels by
``kernels.portable_kernels()``, under which the layer calls ``tf.nn.depthwise_conv2d``
alone).
"""
import tensorflow as tf

from efficientnet_ipu.layers import kernels

MAX_KERNEL_SIZE = 7  # the largest kernel the gradient ops' register blocks hold


def depthwise_conv2d(inputs, kernel, stride, padding):
    """``tf.nn.depthwise_conv2d(inputs, kernel, [1, s, s, 1], padding)`` whose gradients
    run on this project's CPU kernels (compiled on first use, see ``kernels.load``).

    Args:
      inputs: float32 [N, H, W, C].
      kernel: float32 [k, k, C, 1], k <= ``MAX_KERNEL_SIZE`` (channel multiplier 1).
      stride: int >= 1 (both spatial dimensions); padding: "SAME" or "VALID".

    Returns:
      float32 [N, OH, OW, C], OH and OW as ``tf.nn.depthwise_conv2d`` gives them.

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

    @tf.custom_gradient
    def convolve(x, w):
        def gradient(dy):
            dx = library.efficientnet_ipu_depthwise_conv_backprop_input(
                tf.shape(x), w, dy, stride=stride, padding=padding)
            dw = library.efficientnet_ipu_depthwise_conv_backprop_filter(
                x, dy, kernel_size=size, stride=stride, padding=padding)
            return dx, dw
        return tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], padding), gradient

    return convolve(inputs, kernel)
