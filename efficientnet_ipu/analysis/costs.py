"""Parameter, multiply-add and arithmetic-intensity accounting (paper 001 Table 2, App. A).

FLOPs in paper 001 (and in the EfficientNet paper) are multiply-adds (MACs). The
TensorFlow profiler counts grouped convolutions as 0 FLOPs, so ``count_macs`` counts per
layer from the kernel shapes and the output sizes of a real forward pass.

Command: ``python -m efficientnet_ipu.analysis --table2`` prints paper 001's Table 2
beside our counts (``print_table2``).
"""
import sys

from tensorflow import keras
import numpy as np
import tensorflow as tf

from efficientnet_ipu import layers as L
from efficientnet_ipu import models

# Paper 001 Table 2: (size, G, E, params in millions, FLOPs in billions, top-1 accuracy).
TABLE2 = (
    ("b0", 1, 6, 5.3, 0.4, 76.2), ("b0", 4, 5, 5.1, 0.4, 76.4), ("b0", 16, 4, 5.9, 0.6, 76.2),
    ("b0", 32, 3, 6.2, 0.9, 75.4), ("b0", 64, 2, 6.7, 1.5, 73.9),
    ("b1", 1, 6, 7.8, 0.7, 78.2), ("b1", 16, 4, 8.3, 1.1, 78.3),
    ("b2", 1, 6, 9.1, 1.0, 79.2), ("b2", 4, 5, 8.6, 1.0, 79.7), ("b2", 16, 4, 9.5, 1.5, 79.4),
    ("b2", 32, 3, 10.3, 2.1, 78.5), ("b2", 64, 2, 9.9, 3.6, 76.9),
    ("b3", 1, 6, 12.2, 1.8, 80.6), ("b3", 16, 4, 12.6, 2.7, 80.9),
    ("b4", 1, 6, 19.3, 4.4, 82.0), ("b4", 16, 4, 19.3, 6.2, 82.3),
    ("b5", 1, 6, 30.4, 10.2, 82.8), ("b5", 16, 4, 28.7, 13.4, 83.4),
)

_MAC_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
               L.GroupConv2D)


def count_params(model):
    """Number of trainable parameters (int)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _kernel(layer):
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        kernel = getattr(layer, "depthwise_kernel", None)
    return kernel


def count_macs(model, image_size):
    """Multiply-adds of one image through ``model`` at ``image_size`` x ``image_size``.

    Counts every convolution (dense, grouped, depthwise), dense layer and squeeze-excite
    (its two fully-connected layers), each as (output pixels) x (kernel size); works on
    our models and on keras.applications ones. Element-wise ops are not counted (as in
    the EfficientNet paper). Runs one forward pass at batch 1 to get the output sizes.

    Args:
      model: a functional keras.Model with one image input [N, H, W, 3].
      image_size: int > 0, pixels per side.

    Returns: int, MACs per image.

    Raises: ValueError if ``image_size`` is not a positive integer.
    """
    return sum(layer_macs(model, image_size).values())


def layer_macs(model, image_size):
    """Multiply-adds per image of each top-level layer of ``model`` at ``image_size``
    (``count_macs``' counting; an MBConv block's include its squeeze-excite): dict
    {layer name: int}, in layer order, 0 for layers without a kernel.

    Raises: ValueError if ``image_size`` is not a positive integer."""
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError("image_size must be a positive integer, got %r" % (image_size,))
    probes = [layer for layer in model.layers if isinstance(layer, _MAC_LAYERS)]
    blocks = [layer for layer in model.layers if isinstance(layer, L.MBConvBlock)]
    probe_model = keras.Model(model.inputs, [layer.output for layer in probes] +
                              [block.input for block in blocks])
    outputs = probe_model(tf.zeros([1, image_size, image_size, 3]), training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    macs = {layer.name: 0 for layer in model.layers}
    for layer, out in zip(probes, outputs):
        spatial = int(np.prod(out.shape[1:-1])) if len(out.shape) == 4 else 1
        macs[layer.name] = spatial * int(np.prod(_kernel(layer).shape))
    for block, block_in in zip(blocks, outputs[len(probes):]):
        macs[block.name] = _block_macs(block, block_in.shape) + int(
            np.prod(block.se.reduce_kernel.shape)) + int(np.prod(block.se.expand_kernel.shape))
    return macs


def _block_macs(block, input_shape):
    """MACs of the convolutions inside an MBConvBlock for an input of ``input_shape``."""
    h, w = int(input_shape[1]), int(input_shape[2])
    total = 0
    if block.expand_conv is not None:
        total += h * w * int(np.prod(block.expand_conv.kernel.shape))
    s = block.group_conv.strides
    h, w = -(-h // s), -(-w // s)
    total += h * w * sum(int(np.prod(k.shape)) for k in block.group_conv.kernel_variables())
    total += h * w * int(np.prod(block.project_conv.kernel.shape))
    return total


def arithmetic_intensity(batch_size, kernel_size, field_size, group_size, stride=1,
                         num_groups=1):
    """Arithmetic intensity of a group convolution, paper 001 Appendix A, eq. (5)-(6).

    I = FLOPs / (weight memory + activation memory)
      = G^2 k^2 B f^2 N / s  /  (k^2 G^2 N + B f^2 G N)
      = G k^2 B f^2 / (s (G k^2 + B f^2))                      (eq. 7)

    Units: FLOPs (multiply-adds) per element moved; independent of ``num_groups`` N.

    Args: batch_size B, kernel_size k, field_size f (pixels per side), group_size G,
      stride s, num_groups N; all positive numbers.

    Raises: ValueError for a non-positive argument.
    """
    args = dict(batch_size=batch_size, kernel_size=kernel_size, field_size=field_size,
                group_size=group_size, stride=stride, num_groups=num_groups)
    for field, value in args.items():
        if not value > 0:
            raise ValueError("%s must be positive, got %r" % (field, value))
    b, k, f, g, s, n = (float(v) for v in args.values())
    flops = g * g * k * k * b * f * f * n / s
    memory = k * k * g * g * n + b * f * f * g * n
    return flops / memory


def table2_rows(sizes=None, group_rule="graphcore"):
    """Our counts for each row of paper 001 Table 2, GN with 4 groups at native resolution,
    with ``group_rule`` for the layers whose channels G does not divide
    (``layers.group_channels``).

    Yields dicts: size, G, E, paper_params_m, ours_params_m, paper_flops_b, ours_macs_b.
    """
    for size, g, e, params, flops, accuracy in TABLE2:
        if sizes and size not in sizes:
            continue
        model = models.EfficientNet(size, group_size=g, expansion_ratio=e, norm="gn",
                                    group_rule=group_rule)
        resolution = models.SIZES[size][2]
        yield dict(size=size, G=g, E=e, paper_params_m=params,
                   ours_params_m=count_params(model) / 1e6, paper_flops_b=flops,
                   ours_macs_b=count_macs(model, resolution) / 1e9, accuracy=accuracy)
        keras.backend.clear_session()


def print_table2(sizes=(), group_rule="graphcore"):
    """Print paper 001 Table 2 beside our parameter and MAC counts (``table2_rows``)."""
    print("%-4s %3s %2s | %8s %8s %7s | %8s %8s %7s" % (
        "size", "G", "E", "P paper", "P ours", "diff M", "F paper", "F ours", "diff %"))
    for row in table2_rows(list(sizes), group_rule):
        print("%-4s %3d %2d | %8.1f %8.3f %+7.3f | %8.1f %8.3f %+6.1f%%" % (
            row["size"], row["G"], row["E"], row["paper_params_m"], row["ours_params_m"],
            row["ours_params_m"] - row["paper_params_m"], row["paper_flops_b"],
            row["ours_macs_b"],
            100.0 * (row["ours_macs_b"] / row["paper_flops_b"] - 1.0)))
        sys.stdout.flush()
