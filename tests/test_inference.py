"""The folded inference graph of the export (layers/inference.py): batch norm folded into
the convolution before it, proxy norm's means and scales folded into the MBConv
convolutions, all weight-only values constants; the same function as the Keras layers."""
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_ipu import kernels
from efficientnet_ipu import layers as L
from efficientnet_ipu.layers import inference


NORM_WEIGHTS = ("gamma", "beta", "proxy_", "moving_")


def trained_like(layer, seed, names=NORM_WEIGHTS + ("reduce_bias", "expand_bias")):
    """Move the weights of a built layer whose names start with ``names`` (by default every
    norm, proxy and bias weight) off their initial values, as training would (the moving
    variance stays positive)."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        name = weight.name.split("/")[-1]
        if name.startswith(names):
            value = weight.numpy()
            shift = rng.uniform(-0.3, 0.3, value.shape).astype(value.dtype)
            weight.assign(np.abs(value + shift) + 0.5 if name.startswith("moving_variance")
                          else value + shift)


def traced(fn, x, folded):
    with kernels.tensorflow_only():
        if folded:
            with inference.folded():
                return tf.function(fn).get_concrete_function(x)
        return tf.function(fn).get_concrete_function(x)


def op_types(concrete):
    return [op.type for op in concrete.graph.get_operations()]


def quantile_ops(concrete):
    """Ops of the proxy statistics' quantile pass ([200, C] outputs)."""
    return [op for op in concrete.graph.get_operations() if op.outputs
            and op.outputs[0].shape.rank == 2 and op.outputs[0].shape[0] == 200]


@pytest.mark.parametrize("norm,group_size,channels", [
    ("bn", 1, 16), ("bn", 16, 32), ("bn", 16, 24), ("bn_pn", 16, 32),
    ("ln_pn", 16, 32), ("gn_pn", 1, 16)])
def test_folded_block_computes_the_blocks_inference_function(norm, group_size, channels):
    """An MBConv block (expand, group conv, squeeze-excite, projection, residual) traced in
    ``inference.folded()`` gives the Keras block's inference output. What depends only on
    the weights is read once, when traced: no Rsqrt of moving variances, no proxy quantile
    pass, and under BN a later change of the norms' weights does not reach it. C = 24 at
    G16 makes unequal groups (``group_rule`` "graphcore")."""
    block = L.MBConvBlock(channels, channels, kernel_size=3, expand_ratio=4,
                          group_size=group_size, norm=norm, name="block2b")
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 8, channels)), tf.float32)
    block(x)
    trained_like(block, seed=group_size)
    expected = block(x, training=False).numpy()
    live = traced(lambda t: block(t, training=False), x, folded=False)
    folded = traced(lambda t: block(t, training=False), x, folded=True)
    np.testing.assert_allclose(folded(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    if norm.startswith("bn"):
        assert "Rsqrt" in op_types(live) and "Rsqrt" not in op_types(folded)
    if norm.endswith("_pn"):
        assert quantile_ops(live) and not quantile_ops(folded)
    if norm == "bn":
        # Every norm weight is folded into a constant: a later change does not reach it.
        trained_like(block, seed=99, names=NORM_WEIGHTS)
        np.testing.assert_allclose(folded(x).numpy(), expected, rtol=1e-5, atol=1e-5)
        assert not np.allclose(live(x).numpy(), expected, atol=1e-3)


def test_training_calls_are_not_folded():
    """Within ``folded()`` a training-mode call keeps the batch statistics."""
    block = L.MBConvBlock(16, 16, expand_ratio=4, norm="bn", name="block2b")
    x = tf.constant(np.random.default_rng(1).normal(size=(4, 8, 8, 16)), tf.float32)
    block(x)
    trained_like(block, seed=1)
    with inference.folded():
        assert not block.folds_batch_norm(training=True)
        assert block.folds_batch_norm(training=False)
    assert not block.folds_batch_norm(training=False)


@pytest.mark.parametrize("max_pixels", [0, "auto"])
def test_pointwise_conv_folded_weights_equal_the_conv_then_the_affine(max_pixels):
    """PointwiseConv2D's ``folded_weights`` / ``call_folded`` equal conv(x) * scale + shift,
    as a convolution (``matmul_max_pixels`` 0) and as a matrix product, with a bias."""
    rng = np.random.default_rng(2)
    conv = L.PointwiseConv2D(12, use_bias=True, matmul_max_pixels=max_pixels)
    x = tf.constant(rng.normal(size=(2, 5, 5, 8)), tf.float32)
    conv(x)
    conv.bias.assign(rng.normal(size=12).astype(np.float32))
    scale = tf.constant(rng.uniform(0.5, 2.0, 12), tf.float32)
    shift = tf.constant(rng.normal(size=12), tf.float32)
    kernel, bias = conv.folded_weights(scale, shift)
    np.testing.assert_allclose(conv.call_folded(x, kernel, bias).numpy(),
                               (conv(x) * scale + shift).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="without activation"):
        L.PointwiseConv2D(4, activation="relu").folded_weights(scale, shift)
