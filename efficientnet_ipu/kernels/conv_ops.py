"""The group-convolution ops: G16 convolutions and depthwise-convolution gradients.

``group_conv2d`` is the door that ``layers.GroupConv2D`` calls. It runs the layer's own
TensorFlow formulation (its ``reference``) unless ``dispatch.group_conv_variant`` picks
another:

- "ours", 16 input and 16 output channels per group: ``group_conv16``, three ops of
  ``csrc/group_conv16.cc`` (forward, input gradient, kernel gradient); each group is a
  16 x 16 matrix per kernel tap, a block of output pixels x 16 channels stays in registers
  (AVX2, or AVX-512 where the CPU has it), and on AVX-512 3x3 and 5x5 stride-1 layers run
  as Winograd F(2x2, 3x3) and F(2x2, 5x5) (Lavin and Gray, CVPR 2016, arXiv:1509.09308).
  The input offset and scale of a folded proxy norm are taken while the ops copy their
  input and pack their kernel.
- "ours", depthwise (group size 1): ``depthwise_conv2d``, TensorFlow's forward and the
  two gradient ops of ``csrc/depthwise_conv.cc``, with ``dispatch.depthwise_route``
  swapping the passes that are one convolution to the faster code.
- "split": one TensorFlow convolution per group, concatenated.

Each computes ``tf.nn.conv2d`` on the grouped kernel up to float32 round-off (Winograd's
results differ from the direct sums by about 5e-7 of the largest output).
"""
import tensorflow as tf

from efficientnet_ipu.kernels import dispatch, library, settings


def group_conv2d(inputs, kernel, strides, padding, input_offset=None, input_scale=None,
                 mode="auto", variant=None, reference=None):
    """``reference(inputs, kernel, strides, padding, input_offset, input_scale)``, or the
    same function on the variant ``dispatch.group_conv_variant`` picks.

    Args:
      inputs: [N, H, W, C_in], the layer's compute dtype.
      kernel: [k, k, C_in / groups, filters] (``tf.nn.conv2d``'s grouped layout), inputs'
        dtype.
      strides: int >= 1; padding: "SAME" or "VALID".
      input_offset, input_scale: None or [C_in], inputs' dtype: convolve
        (inputs + input_offset) * input_scale (the zero padding is not shifted).
      mode: the layer's ``kernels`` option (``settings.MODES``).
      variant: None, or a variant the layer always runs (as ``settings.override(conv=...)``).
      reference: the layer's TensorFlow formulation, a function of the arguments above.

    Returns:
      [N, OH, OW, filters], as ``tf.nn.conv2d`` gives them.

    Raises:
      ValueError: ``settings.override(conv="ours")`` for a layer our ops do not compute.
      RuntimeError: our ops chosen where the library cannot be built (``library.load``).
    """
    k, group_size, filters = (int(kernel.shape[0]), int(kernel.shape[2]),
                              int(kernel.shape[3]))
    groups = int(inputs.shape[-1]) // group_size
    variant = group_conv_variant(int(inputs.shape[-1]), group_size, filters, k, inputs.dtype,
                                 mode, variant)
    depthwise = group_size == 1 and filters == groups
    if variant == "ours" and depthwise:
        # One input channel per group: the scale multiplies the kernel's last axis.
        if input_offset is not None:
            inputs = inputs + input_offset
        if input_scale is not None:
            kernel = kernel * input_scale
        return depthwise_conv2d(inputs, tf.reshape(kernel, [k, k, filters, 1]), strides,
                                padding)
    if variant == "ours":
        return group_conv16(inputs, kernel, strides, padding, input_offset, input_scale)
    if variant == "split" and groups > 1:
        def per_group(t):  # [C_in] -> a list of [C_in / groups], or Nones
            return [None] * groups if t is None else tf.split(t, groups)
        return tf.concat([
            reference(x, w, strides, padding, offset, scale)
            for x, w, offset, scale in zip(
                tf.split(inputs, groups, axis=-1), tf.split(kernel, groups, axis=-1),
                per_group(input_offset), per_group(input_scale))], axis=-1)
    return reference(inputs, kernel, strides, padding, input_offset, input_scale)


def group_conv_variant(channels, group_size, filters, kernel_size, dtype, mode,
                       variant=None):
    """``dispatch.group_conv_variant`` for a layer of ``channels`` inputs, ``group_size``
    (resolved: a divisor of ``channels``), ``filters`` outputs and a k x k kernel;
    ``variant`` (not None) forces one as ``settings.override(conv=...)`` does."""
    groups = channels // group_size
    with settings.override(conv=variant):
        return dispatch.group_conv_variant(groups, group_size, filters // groups, dtype,
                                           kernel_size, mode)


def prepare_group_conv(channels, group_size, filters, kernel_size, dtype, mode,
                       variant=None):
    """Check at build time that the variant ``group_conv_variant`` picks can run here:
    compile the op library now if it is ours, check TensorFlow's grouped-convolution
    gradient support if it is "grouped". Returns the variant.

    Raises:
      ValueError, RuntimeError: as ``group_conv2d``, and ``check_grouped_conv_support``.
    """
    variant = group_conv_variant(channels, group_size, filters, kernel_size, dtype, mode,
                                 variant)
    groups = channels // group_size
    depthwise = group_size == 1 and filters == groups
    if variant == "ours":
        library.load("GroupConv2D", "kernels='tensorflow'")
    elif variant == "grouped" and groups > 1 and not depthwise:
        check_grouped_conv_support()
    return variant


def check_grouped_conv_support():
    """Raise RuntimeError if grouped-convolution gradients cannot run here.

    On CPU, TensorFlow computes them only with its oneDNN kernels; they are off when
    ``TF_ENABLE_ONEDNN_OPTS=0`` or, on CPUs without AVX-512, by default. (Importing
    efficientnet_ipu before TensorFlow turns them on.) Machines with a GPU are fine.
    """
    if tf.config.list_physical_devices("GPU"):
        return
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow build without the probe: let TensorFlow decide
        return
    if not _pywrap_util_port.IsMklEnabled():
        raise RuntimeError(
            "GroupConv2D's grouped convolution needs TensorFlow's oneDNN kernels on CPU "
            "(without them grouped-convolution gradients are not supported). Set "
            "TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow is imported (importing "
            "efficientnet_ipu first does this), or use "
            "efficientnet_ipu.kernels.override(conv='split').")


@tf.RegisterGradient("EfficientnetIpuGroupConv16")
def _gradient(op, grad):
    """Gradients of EfficientnetIpuGroupConv16 with respect to its input, kernel, input
    offset and input scale. The offset's is the input gradient summed over N, H and W: the
    input-gradient op sums each row over W as it writes it (its second output, [N, C]),
    instead of a TensorFlow reduction over the full gradient. The scale's is the kernel
    gradient op's second output."""
    x, kernel, offset, scale = op.inputs
    stride, padding = op.get_attr("stride"), op.get_attr("padding")
    ops = library.load()
    dx, dx_sum = ops.efficientnet_ipu_group_conv16_backprop_input(
        tf.shape(x), kernel, grad, scale, stride=stride, padding=padding)
    dkernel, dscale = ops.efficientnet_ipu_group_conv16_backprop_filter(
        x, kernel, grad, offset, scale, stride=stride, padding=padding)
    return dx, dkernel, tf.reduce_sum(dx_sum, axis=0), dscale


def group_conv16(inputs, kernel, stride, padding, input_offset=None, input_scale=None):
    """``tf.nn.conv2d((inputs + input_offset) * input_scale, kernel, stride, padding)`` for
    16-channel groups, on this project's ops (compiled on first use, see ``library.load``).
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
      RuntimeError: see ``library.load``.
      tf.errors.InvalidArgumentError: shapes as above violated.
    """
    ops = library.load("GroupConv2D", "kernels='tensorflow'")
    channels = tf.shape(inputs)[-1:]
    if input_offset is None:
        input_offset = tf.zeros(channels, inputs.dtype)
    if input_scale is None:
        input_scale = tf.ones(channels, inputs.dtype)
    return ops.efficientnet_ipu_group_conv16(inputs, kernel, input_offset, input_scale,
                                                 stride=int(stride), padding=padding)


def depthwise_conv2d(inputs, kernel, stride, padding):
    """``tf.nn.depthwise_conv2d(inputs, kernel, [1, s, s, 1], padding)`` whose gradients
    run on this project's CPU kernels (compiled on first use, see ``library.load``).

    Args:
      inputs: float32 [N, H, W, C].
      kernel: float32 [k, k, C, 1], k <= ``dispatch.DEPTHWISE_MAX_KERNEL_SIZE`` (channel
        multiplier 1).
      stride: int >= 1 (both spatial dimensions); padding: "SAME" or "VALID".

    Returns:
      float32 [N, OH, OW, C], OH and OW as ``tf.nn.depthwise_conv2d`` gives them. For
      stride 1 and "SAME", ``route`` may run the forward on our op, or the input gradient
      on ``tf.nn.depthwise_conv2d``, whichever is faster at this width.

    Raises:
      RuntimeError: see ``library.load``.
      ValueError: a kernel larger than ``dispatch.DEPTHWISE_MAX_KERNEL_SIZE`` or with a
        channel multiplier
        other than 1.
    """
    size, multiplier = int(kernel.shape[0]), int(kernel.shape[3])
    if size > dispatch.DEPTHWISE_MAX_KERNEL_SIZE or multiplier != 1:
        raise ValueError("depthwise_conv2d: the CPU gradient kernels take kernels up to "
                         "%dx%d with channel multiplier 1, got %s"
                         % (dispatch.DEPTHWISE_MAX_KERNEL_SIZE,
                            dispatch.DEPTHWISE_MAX_KERNEL_SIZE, kernel.shape))
    ops = library.load("GroupConv2D", "kernels='tensorflow'")
    stride = int(stride)
    our_forward, onednn_input_gradient = dispatch.depthwise_route(inputs.shape[2], size,
                                                                  stride, padding)

    @tf.custom_gradient
    def convolve(x, w):
        def gradient(dy):
            if onednn_input_gradient:
                dx = tf.nn.depthwise_conv2d(dy, tf.reverse(w, [0, 1]), [1, 1, 1, 1], "SAME")
            else:
                dx = ops.efficientnet_ipu_depthwise_conv_backprop_input(
                    tf.shape(x), w, dy, stride=stride, padding=padding)
            dw = ops.efficientnet_ipu_depthwise_conv_backprop_filter(
                x, dy, kernel_size=size, stride=stride, padding=padding)
            return dx, dw
        if our_forward:
            y = ops.efficientnet_ipu_depthwise_conv_backprop_input(
                tf.shape(x), tf.reverse(w, [0, 1]), x, stride=1, padding="SAME")
        else:
            y = tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], padding)
        return y, gradient

    return convolve(inputs, kernel)
