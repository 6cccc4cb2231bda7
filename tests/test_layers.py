"""Layer behaviour: group convolution, normalization, proxy norm, squeeze-excite, MBConv."""
import contextlib
import math
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow import keras

from conftest import reference_group_conv
from efficientnet_ipu import kernels
from efficientnet_ipu import layers as L


@pytest.mark.parametrize("group_size,channels,strides", [
    (1, 32, 1), (1, 24, 2), (4, 40, 1), (16, 96, 2), (16, 48, 1), (96, 96, 1)])
def test_group_conv_matches_per_group_convolutions(group_size, channels, strides):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 15, 17, channels)).astype(np.float32))
    layer = L.GroupConv2D(channels, 3, strides=strides, group_size=group_size)
    y = layer(x)
    groups = channels // group_size
    assert layer.kernel.shape == (3, 3, group_size, channels)
    expected = reference_group_conv(x, layer.kernel, strides, groups)
    assert y.shape == (2, math.ceil(15 / strides), math.ceil(17 / strides), channels)
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_group_conv_gradient_matches_reference():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 9, 9, 32)).astype(np.float32))
    layer = L.GroupConv2D(32, 3, group_size=16)
    layer(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = tf.reduce_sum(tf.sin(layer(x)))
        ref = tf.reduce_sum(tf.sin(reference_group_conv(x, layer.kernel, 1, 2)))
    for a, b in zip(tape.gradient(ours, [x, layer.kernel]), tape.gradient(ref, [x, layer.kernel])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_resolve_group_size_rounds_to_nearest_divisor():
    assert L.resolve_group_size(96, 16) == 16
    assert L.resolve_group_size(72, 32) == 36      # divisors 24 and 36: 36 is nearer
    assert L.resolve_group_size(40, 16) == 20      # 10 and 20 tie at distance 4/6 -> 20
    assert L.resolve_group_size(32, 64) == 32      # one group
    assert L.resolve_group_size(30, 1) == 1
    with pytest.raises(ValueError, match="group_size"):
        L.resolve_group_size(32, 0)


def test_group_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="group_size"):
        L.GroupConv2D(16, 3, group_size=0)
    with pytest.raises(ValueError, match="padding"):
        L.GroupConv2D(16, 3, padding="full")
    with pytest.raises(ValueError, match="filters"):
        L.GroupConv2D(8, 3, group_size=4)(tf.zeros([1, 4, 4, 48]))  # 12 groups, 8 filters


@pytest.mark.parametrize("groups", [1, 4, -1])
def test_group_norm_matches_numpy(groups):
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(3, 5, 6, 16)).astype(np.float32)
    layer = L.GroupNormalization(groups=groups, epsilon=1e-3)
    y = layer(tf.constant(x)).numpy()
    g = 16 if groups == -1 else groups
    xg = x.reshape(3, 5, 6, g, 16 // g)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = xg.var(axis=(1, 2, 4), keepdims=True)
    expected = ((xg - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_group_norm_float16_statistics_in_float32():
    x = tf.constant(np.random.default_rng(3).normal(100.0, 1.0, (2, 8, 8, 8)), tf.float16)
    y = L.LayerNormalization(dtype="mixed_float16")(x)
    assert y.dtype == tf.float16
    assert abs(float(tf.reduce_mean(tf.cast(y, tf.float32)))) < 1e-2
    assert abs(float(tf.math.reduce_std(tf.cast(y, tf.float32))) - 1.0) < 2e-2


def test_norm_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        L.GroupNormalization(groups=0)
    with pytest.raises(ValueError, match="does not divide"):
        L.GroupNormalization(groups=3)(tf.zeros([1, 2, 2, 8]))
    with pytest.raises(ValueError, match="norm must be one of"):
        L.parse_norm("layer")


def integrate_gaussian(fn, mean, std):
    """E and Var of fn(Y), Y ~ N(mean, std^2), by the trapezoid rule on a fine grid."""
    y = np.linspace(-14.0, 14.0, 400001)
    pdf = np.exp(-0.5 * y * y) / math.sqrt(2 * math.pi)
    z = fn(mean + std * y)
    expectation = np.trapezoid(z * pdf, y)
    return expectation, np.trapezoid((z - expectation) ** 2 * pdf, y)


NUMPY_ACTIVATIONS = {"swish": lambda v: v / (1.0 + np.exp(-v)), "relu": lambda v: np.maximum(v, 0)}


def make_pn(activation, gamma, beta, proxy_gamma, proxy_beta, num_proxy_samples=200):
    layer = L.ProxyNormActivation(activation, num_proxy_samples=num_proxy_samples)
    layer.build((None, None, None, len(gamma)))
    for var, value in ((layer.gamma, gamma), (layer.beta, beta),
                       (layer.proxy_gamma, proxy_gamma), (layer.proxy_beta, proxy_beta)):
        var.assign(np.asarray(value, np.float32))
    return layer


@pytest.mark.parametrize("activation", ["swish", "relu"])
def test_proxy_moments_match_integration_at_init(activation):
    layer = make_pn(activation, [1.0], [0.0], [0.0], [0.0])
    mean, var = (t.numpy()[0] for t in layer.proxy_moments())
    exp_mean, exp_var = integrate_gaussian(NUMPY_ACTIVATIONS[activation], 0.0, 1.0)
    assert abs(mean - exp_mean) < 1e-3
    assert abs(var - exp_var) < 1e-3


@pytest.mark.parametrize("activation", ["swish", "relu"])
def test_proxy_moments_match_integration_for_trained_parameters(activation):
    """gamma, beta and the proxy parameters away from init; 1000 quantiles reach 1e-3."""
    rng = np.random.default_rng(4)
    c = 24
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.uniform(-1.0, 1.0, c)
    pgamma, pbeta = rng.uniform(-0.2, 0.2, c), rng.uniform(-0.2, 0.2, c)
    layer = make_pn(activation, gamma, beta, pgamma, pbeta, num_proxy_samples=1000)
    mean, var = (t.numpy() for t in layer.proxy_moments())
    fn = NUMPY_ACTIVATIONS[activation]
    for i in range(c):
        exp_mean, exp_var = integrate_gaussian(
            lambda y: fn(gamma[i] * y + beta[i]), pbeta[i], 1.0 + pgamma[i])
        assert abs(mean[i] - exp_mean) < 1e-3, i
        assert abs(var[i] - exp_var) < 1e-3, i


@pytest.mark.parametrize("activation", ["swish", "relu"])
def test_proxy_norm_output_is_channel_normalized_on_gaussian_input(activation):
    rng = np.random.default_rng(5)
    c = 8
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.uniform(-1, 1, c)
    pgamma, pbeta = np.zeros(c), np.zeros(c)
    layer = make_pn(activation, gamma, beta, pgamma, pbeta)
    y = tf.constant(rng.normal(size=(4, 256, 256, c)).astype(np.float32))
    z = layer(y).numpy()
    # eps~ = 0.03 shrinks the variance to var / (var + 0.03).
    _, var = layer.proxy_moments()
    expected_var = var.numpy() / (var.numpy() + 0.03)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=0.01)
    np.testing.assert_allclose(z.var(axis=(0, 1, 2)), expected_var, rtol=0.02)
    # and with eps~ tiny, unit variance
    layer.proxy_epsilon = 1e-6
    np.testing.assert_allclose(layer(y).numpy().var(axis=(0, 1, 2)), 1.0, rtol=0.02)


def test_proxy_norm_modes_agree():
    rng = np.random.default_rng(6)
    y = tf.constant(rng.normal(size=(2, 4, 4, 6)).astype(np.float32))
    full = L.ProxyNormActivation(mode="normalize")
    full(y)
    center = L.ProxyNormActivation(mode="center")
    split = L.ProxyNormActivation(mode="split")
    for other in (center, split):
        other(y)
        other.set_weights(full.get_weights())
    centered, scale = split(y)
    assert scale.shape == (6,)
    np.testing.assert_allclose((centered * scale).numpy(), full(y).numpy(), atol=1e-6)
    np.testing.assert_allclose(center(y).numpy(), centered.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        L.ProxyNormActivation(mode="half")
    with pytest.raises(ValueError, match="activation"):
        L.ProxyNormActivation(activation="sigmoidish")


def test_proxy_norm_float16_keeps_float32_statistics():
    layer = L.ProxyNormActivation(dtype="mixed_float16")
    y = tf.constant(np.random.default_rng(7).normal(size=(4, 8, 8, 4)), tf.float16)
    z = layer(y)
    assert z.dtype == tf.float16
    assert layer.proxy_moments()[0].dtype == tf.float32
    assert layer.gamma.dtype == tf.float32


def test_squeeze_excite_applies_scale_to_gate():
    rng = np.random.default_rng(8)
    x = tf.constant(rng.normal(size=(2, 5, 5, 16)).astype(np.float32))
    se = L.SqueezeExcite(4)
    plain = se(x).numpy()
    scale = tf.constant(rng.uniform(0.5, 2.0, 16).astype(np.float32))
    np.testing.assert_allclose(se(x, scale=scale).numpy(), plain * scale.numpy(), rtol=1e-5)
    hidden = x.numpy().mean(axis=(1, 2)) @ se.reduce_kernel.numpy() + se.reduce_bias.numpy()
    hidden = hidden / (1 + np.exp(-hidden))
    gate = 1 / (1 + np.exp(-(hidden @ se.expand_kernel.numpy() + se.expand_bias.numpy())))
    np.testing.assert_allclose(plain, x.numpy() * gate[:, None, None, :], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm", ["bn", "gn_pn", "ln_pn"])
def test_mbconv_shapes_residual_and_stochastic_depth(norm):
    x = tf.constant(np.random.default_rng(9).normal(size=(8, 12, 12, 32)).astype(np.float32))
    block = L.MBConvBlock(32, 32, group_size=16, expand_ratio=4, norm=norm, drop_rate=0.5,
                          name="block9a")
    y_eval = block(x, training=False)
    assert y_eval.shape == x.shape
    assert block.group_conv.name == "block9a_gconv"
    assert block.group_conv.kernel.shape == (3, 3, 16, 128)
    # Stochastic depth: some examples are exactly the identity during training. Seeded: an
    # unseeded draw drops all 8 examples once in 256 runs.
    tf.random.set_seed(9)
    y_train = block(x, training=True).numpy()
    identity = np.all(np.isclose(y_train, x.numpy()), axis=(1, 2, 3))
    assert 0 < identity.sum() < 8 or not identity.any()
    down = L.MBConvBlock(32, 48, strides=2, expand_ratio=6, norm=norm, name="block9b")
    assert down(x).shape == (8, 6, 6, 48)
    if norm.endswith("_pn"):
        assert down.project_norm.beta is None and down.project_norm.gamma is not None


def test_drop_path_keeps_or_zeroes_whole_examples_with_one_pass_each_way():
    rate = 0.25
    x = tf.constant(np.random.default_rng(3).normal(size=(256, 4, 4, 8)).astype(np.float32))
    assert L.drop_path(x, rate, training=False) is x
    assert L.drop_path(x, 0.0, training=True) is x
    tf.random.set_seed(4)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = L.drop_path(x, rate, training=True)
        loss = tf.reduce_sum(y * 2.0)
    y, dx = y.numpy(), tape.gradient(loss, x).numpy()
    kept = np.all(np.isclose(y, x.numpy() / (1 - rate), rtol=1e-6), axis=(1, 2, 3))
    dropped = np.all(y == 0, axis=(1, 2, 3))
    assert np.all(kept ^ dropped)                      # each example wholly kept or dropped
    assert 0.15 < dropped.mean() < 0.35                # 64 of 256 expected (binomial sd 7)
    np.testing.assert_allclose(dx, 2.0 * (y != 0).any(axis=(1, 2, 3), keepdims=True)
                               / (1 - rate) * np.ones_like(y), rtol=1e-6)
    # One [N, H, W, C]-sized op forward: the [N, 1, 1, 1] factor is formed first.
    graph = tf.function(lambda t: L.drop_path(t, rate, True)).get_concrete_function(
        tf.TensorSpec([None, 4, 4, 8])).graph
    full = [op.type for op in graph.get_operations() if op.type in ("Mul", "RealDiv")
            and op.outputs[0].shape.rank == 4 and op.outputs[0].shape[1] == 4]
    assert full == ["Mul"]



def test_random_layers_draw_from_the_step_seed_and_the_layer_name():
    x = tf.ones([64, 2, 2, 4])
    dropout = L.Dropout(0.5, name="top_dropout")

    @tf.function
    def draws(seed):
        with L.seeding.step_seed(seed):
            return (L.drop_path(x, 0.5, True, "block2a"), L.drop_path(x, 0.5, True, "block2b"),
                    dropout(x, training=True))
    first, again, other = draws(tf.constant([5, 7])), draws(tf.constant([5, 7])), \
        draws(tf.constant([5, 8]))
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)                # the seed fixes every draw
        assert not np.array_equal(a, c)                    # another step, other draws
    assert not np.array_equal(first[0], first[1])         # each layer its own draws
    kept = first[2].numpy()
    assert set(np.unique(kept)) == {0.0, 2.0}              # kept elements x / (1 - rate)
    assert 0.4 < (kept == 0).mean() < 0.6
    assert dropout(x, training=False) is x
    # Outside step_seed (the user's own loop): stateful draws, different at each call.
    assert not np.array_equal(dropout(x, training=True), dropout(x, training=True))
    with pytest.raises(ValueError, match="Dropout rate must be in"):
        L.Dropout(1.0)


ONEDNN_OFF_SCRIPT = r"""
import os, sys
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
import tensorflow as tf
x = tf.random.normal([2, 9, 9, 32])
kernel = tf.random.normal([3, 3, 16, 32])
with tf.GradientTape() as tape:
    tape.watch(x)
    y = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "SAME"))
try:
    tape.gradient(y, x)
    print("TF_GRAD_OK")
except tf.errors.InvalidArgumentError as error:
    print("TF_GRAD_FAILS", "not supported on CPU" in str(error))
from efficientnet_ipu import layers as L
try:
    L.GroupConv2D(32, 3, group_size=16, implementation="grouped")(x)
    print("LAYER_BUILT")
except RuntimeError as error:
    print("LAYER_REFUSES", "TF_ENABLE_ONEDNN_OPTS=1" in str(error))
layer = L.GroupConv2D(32, 3, group_size=16, implementation="split")
with tf.GradientTape() as tape:
    tape.watch(x)
    y = tf.reduce_sum(layer(x))
print("SPLIT_GRAD", tape.gradient(y, x).shape)
"""


def test_grouped_conv_gradient_needs_onednn_on_cpu():
    """Pins TensorFlow's behaviour: with oneDNN off the grouped-conv gradient fails on CPU,
    our layer refuses with a clear message, and implementation='split' still trains."""
    import subprocess
    import sys
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU computes grouped-conv gradients without oneDNN")
    out = subprocess.run([sys.executable, "-c", ONEDNN_OFF_SCRIPT], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert "TF_GRAD_FAILS True" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "LAYER_REFUSES True" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "SPLIT_GRAD (2, 9, 9, 32)" in out.stdout, out.stdout + out.stderr[-2000:]


def test_split_implementation_equals_grouped():
    x = tf.constant(np.random.default_rng(10).normal(size=(2, 10, 10, 64)).astype(np.float32))
    grouped = L.GroupConv2D(64, 3, strides=2, group_size=16)
    split = L.GroupConv2D(64, 3, strides=2, group_size=16, implementation="split")
    grouped(x)
    split(x)
    split.set_weights(grouped.get_weights())
    np.testing.assert_allclose(split(x).numpy(), grouped(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm,mode", [("ln_pn", "normalize"), ("gn_pn", "split"),
                                       ("ln_pn", "center")])
def test_fused_norm_proxy_activation_equals_separate_layers(norm, mode):
    """NormActivation folds the norm's scale/shift into PN's affine and, on CPU, applies
    PN's mean and scale in the same op: same result and gradients (input and weights) as
    running GroupNormalization and ProxyNormActivation one after the other."""
    rng = np.random.default_rng(11)
    x = tf.constant(rng.normal(2.0, 3.0, size=(3, 7, 7, 16)).astype(np.float32))
    fused = L.NormActivation(norm, mode=mode)
    fused(x)
    pn = fused.act_layer
    for var in pn.trainable_variables:
        var.assign(rng.uniform(-0.5, 0.5, var.shape).astype(np.float32) + (
            1.0 if "gamma" in var.name and "proxy" not in var.name else 0.0))
    upstream = [tf.constant(rng.normal(size=(3, 7, 7, 16)).astype(np.float32)),
                tf.constant(rng.normal(size=16).astype(np.float32))]

    def value_and_grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.nest.flatten(fn(x))
            loss = sum(tf.reduce_sum(o * u) for o, u in zip(out, upstream))
        return out + tape.gradient(loss, [x] + pn.trainable_variables)

    ours = value_and_grads(fused)
    separate = value_and_grads(lambda v: pn(fused.norm_layer(v)))
    assert len(ours) == len(separate) == len(tf.nest.flatten(fused(x))) + 5
    for a, b in zip(ours, separate):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4,
                                   atol=1e-5 * max(1.0, float(tf.reduce_max(tf.abs(b)))))


def test_swish_gradient_equals_tensorflow_silu():
    """Our swish has a cheaper hand-written gradient; it must equal TensorFlow's."""
    x = tf.constant(np.linspace(-12.0, 12.0, 4001).astype(np.float32))
    upstream = tf.cos(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = L.proxy_norm.swish(x)
        ref = tf.nn.silu(x)
    np.testing.assert_array_equal(ours.numpy(), ref.numpy())
    np.testing.assert_allclose(tape.gradient(ours, x, upstream).numpy(),
                               tape.gradient(ref, x, upstream).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("portable", [True, False])
def test_channel_moments_gradient_equals_autodiff(portable):
    """Both paths: TensorFlow ops (portable) and, on CPU, the fused op; 6 channels is a
    masked tail of the op's 8-float vectors."""
    rng = np.random.default_rng(20)
    x = tf.constant(rng.normal(1.0, 2.0, size=(3, 5, 7, 6)).astype(np.float32))
    dmean = tf.constant(rng.normal(size=(3, 6)).astype(np.float32))
    dvariance = tf.constant(rng.normal(size=(3, 6)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        if portable:
            with kernels.tensorflow_only():
                mean, variance = L.norm.channel_moments(x)
        else:
            mean, variance = L.norm.channel_moments(x)
        ours = tf.reduce_sum(mean * dmean + variance * dvariance)
        ref_mean, ref_variance = tf.nn.moments(x, axes=[1, 2])
        ref = tf.reduce_sum(ref_mean * dmean + ref_variance * dvariance)
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance.numpy(), x.numpy().var(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(ours, x).numpy(), tape.gradient(ref, x).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("portable", [True, False])
def test_channel_moments_through_gradient_equals_autodiff(portable):
    """channel_moments_through: the moments and x itself; the gradient that reaches
    x_through joins the moments' in one op on CPU (no AddN in the graph), and the sum
    equals automatic differentiation's."""
    rng = np.random.default_rng(21)
    x = tf.constant(rng.normal(1.0, 2.0, size=(3, 5, 7, 13)).astype(np.float32))
    dmean, dvariance = (tf.constant(rng.normal(size=(3, 13)).astype(np.float32))
                        for _ in range(2))
    dx = tf.constant(rng.normal(size=x.shape).astype(np.float32))

    @tf.function
    def gradients():
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            with kernels.tensorflow_only() if portable else contextlib.nullcontext():
                mean, variance, through = L.norm.channel_moments_through(x)
            ours = (tf.reduce_sum(mean * dmean + variance * dvariance)
                    + tf.reduce_sum(tf.sin(through) * dx))
            ref_mean, ref_variance = tf.nn.moments(x, axes=[1, 2])
            ref = (tf.reduce_sum(ref_mean * dmean + ref_variance * dvariance)
                   + tf.reduce_sum(tf.sin(x) * dx))
        return through, tape.gradient(ours, x), tape.gradient(ref, x)
    through, ours, ref = gradients()
    np.testing.assert_array_equal(through.numpy(), x.numpy())
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    if not portable and kernels.dispatch.statistics_ops_apply("auto"):
        ops = gradients.get_concrete_function().graph.get_operations()
        grads = [op for op in ops if op.type == "EfficientnetIpuChannelMomentsGrad"]
        assert [op.get_attr("num_addend") for op in grads] == [1]
        # The reference's own moments gradient still needs its AddN; ours adds none.
        assert sum(op.type in ("AddN", "AddV2") and "gradient_tape/" in op.name
                   and op.outputs[0].shape.rank == 4 for op in ops) <= 1


@pytest.mark.parametrize("groups", [1, 4, -1])
def test_group_norm_offset_equals_normalizing_shifted_input(groups):
    rng = np.random.default_rng(21)
    x = tf.constant(rng.normal(0.5, 2.0, size=(3, 6, 6, 8)).astype(np.float32))
    offset = tf.constant(rng.normal(0.0, 1.5, size=(3, 8)).astype(np.float32))
    norm = L.GroupNormalization(groups)
    norm(x)
    norm.set_weights([rng.uniform(0.5, 1.5, 8).astype(np.float32),
                      rng.normal(size=8).astype(np.float32)])
    np.testing.assert_allclose(norm(x, offset=offset).numpy(),
                               norm(x - offset[:, None, None, :]).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("group_size,channels,filters,implementation", [
    (1, 32, 32, "grouped"), (4, 40, 40, "grouped"), (16, 48, 48, "grouped"),
    (16, 48, 48, "split"), (48, 48, 48, "grouped"),
    (8, 32, 96, "grouped")])   # 12 filters per group: a channel multiplier of 1.5
def test_group_conv_input_scale_equals_scaling_the_input(group_size, channels, filters,
                                                         implementation):
    rng = np.random.default_rng(22)
    x = tf.constant(rng.normal(size=(2, 9, 9, channels)).astype(np.float32))
    scale = tf.constant(rng.uniform(0.2, 3.0, channels).astype(np.float32))
    layer = L.GroupConv2D(filters, 3, group_size=group_size, implementation=implementation)
    np.testing.assert_allclose(layer(x, input_scale=scale).numpy(), layer(x * scale).numpy(),
                               rtol=1e-4, atol=1e-4)
    # The gradient with respect to the scale, too (MBConv folding trains through it).
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(scale)
        folded = tf.reduce_sum(tf.sin(layer(x, input_scale=scale)))
        scaled = tf.reduce_sum(tf.sin(layer(x * scale)))
    np.testing.assert_allclose(tape.gradient(folded, scale).numpy(),
                               tape.gradient(scaled, scale).numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("norm", ["ln_pn", "gn_pn", "in_pn"])
@pytest.mark.parametrize("expand_ratio,group_size,strides", [(4, 16, 1), (1, 16, 1), (6, 1, 2)])
def test_mbconv_proxy_folding_equals_separate_layers(norm, expand_ratio, group_size, strides):
    """Under GN/LN/IN + PN the block folds the proxy means and scales into the convolutions
    and norms around them (layers/proxy_norm_folded.py). Forward and gradients must equal
    the plain composition: norm, then ProxyNormActivation, as separate layers."""
    rng = np.random.default_rng(23)
    filters_in = 32 if expand_ratio == 1 else 24
    block = L.MBConvBlock(filters_in, 24 if strides == 1 else 40, 3, strides, expand_ratio,
                          group_size, norm=norm, name="block2a")
    block.fold = True  # the folded form whatever the group conv runs on
    x = tf.constant(rng.normal(size=(3, 10, 10, filters_in)).astype(np.float32))
    block(x)
    assert block.folds_proxy_norm()
    for var in block.trainable_variables:  # move every weight away from its initial value
        var.assign(var + rng.normal(0.0, 0.3, var.shape).astype(np.float32))

    def separate(v):
        if block.expand_conv is not None:
            act = block.expand_norm_act
            v = act.act_layer(act.norm_layer(block.expand_conv(v)))
        act = block.norm_act
        v, scale = act.act_layer(act.norm_layer(block.group_conv(v)))
        v = block.project_norm(block.project_conv(block.se(v, scale=scale)))
        return v + x if block.residual else v

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        folded = block(x, training=True)
        ref = separate(x)
        loss_folded = tf.reduce_sum(tf.sin(folded))
        loss_ref = tf.reduce_sum(tf.sin(ref))
    np.testing.assert_allclose(folded.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    variables = [x] + block.trainable_variables
    for a, b, v in zip(tape.gradient(loss_folded, variables), tape.gradient(loss_ref, variables),
                       ["x"] + [w.name for w in block.trainable_variables]):
        scale = np.abs(b.numpy()).max()
        np.testing.assert_allclose(a.numpy() / scale, b.numpy() / scale, atol=1e-4, err_msg=v)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True)])
def test_batch_norm_fused_kernel_equals_keras(center, scale, portable):
    """norm.BatchNormalization trains with this project's CPU ops where they apply
    (moments, ``batch_norm_statistics``, scale-shift), else (``portable``, other devices)
    with TensorFlow's fused kernel; outputs, gradients and moving statistics must equal
    keras.layers.BatchNormalization's either way."""
    import contextlib
    from tensorflow import keras
    context = kernels.tensorflow_only if portable else contextlib.nullcontext
    rng = np.random.default_rng(24)
    x = tf.constant(rng.normal(1.5, 2.0, size=(4, 6, 5, 8)).astype(np.float32))
    ours = L.norm.BatchNormalization(momentum=0.9, epsilon=1e-3, center=center, scale=scale)
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, center=center,
                                          scale=scale)
    ours(x)
    ref(x)
    weights = [w + rng.uniform(0.1, 0.5, w.shape).astype(np.float32)
               for w in ref.get_weights()]
    ref.set_weights(weights)
    ours.set_weights(weights)
    if not portable and ours.fusable(x) and kernels.norm_ops_apply(x, "linear"):
        with context():
            graph = tf.function(lambda t: ours(t, training=True)).get_concrete_function(
                x).graph
        assert "EfficientnetIpuBatchNormStatistics" in {o.type for o in graph.get_operations()}
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        with context():
            y_ours = ours(x, training=True)
        y_ref = ref(x, training=True)
        loss_ours = tf.reduce_sum(tf.sin(y_ours))
        loss_ref = tf.reduce_sum(tf.sin(y_ref))
    np.testing.assert_allclose(y_ours.numpy(), y_ref.numpy(), rtol=1e-4, atol=1e-4)
    for a, b in zip(tape.gradient(loss_ours, [x] + ours.trainable_variables),
                    tape.gradient(loss_ref, [x] + ref.trainable_variables)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    for a, b in zip(ours.get_weights(), ref.get_weights()):  # moving statistics updated alike
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours.get_weights()[-1], weights[-1])
    np.testing.assert_allclose(ours(x, training=False).numpy(), ref(x, training=False).numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("avx512", [False, True])
@pytest.mark.parametrize("channels,group_size,expected", [
    (32, 16, "split"), (240, 16, "split"), (320, 16, "grouped"), (96, 8, "split"),
    (120, 4, "grouped")])
def test_auto_implementation_choice_and_equality(channels, group_size, expected, avx512,
                                                 monkeypatch):
    """'auto' picks, on a CPU-only machine, the AVX2 kernels for 16-channel groups where
    they can be built; otherwise, without AVX-512, split for few, large groups and grouped
    for the rest, and with AVX-512 grouped (the faster ones on each, see
    kernels.dispatch.group_conv_variant); the function is the same. The CPU's flags are faked both
    ways."""
    flags = set(kernels.library.cpu_flags()) - {"avx512f"}
    monkeypatch.setattr(kernels.library, "cpu_flags",
                        lambda: frozenset(flags | ({"avx512f"} if avx512 else set())))
    if any(d.device_type != "CPU" for d in tf.config.list_physical_devices()):
        expected = "grouped"
    elif group_size == 16 and kernels.available():
        expected = "ours"
    elif avx512:
        expected = "grouped"
    x = tf.constant(np.random.default_rng(25).normal(size=(2, 8, 8, channels)).astype(np.float32))
    auto = L.GroupConv2D(channels, 3, group_size=group_size)
    other = L.GroupConv2D(channels, 3, group_size=group_size)
    other.variant = "split" if expected == "grouped" else "grouped"
    auto(x)
    other(x)
    assert auto.kernel_variant == expected
    other.set_weights(auto.get_weights())
    np.testing.assert_allclose(auto(x).numpy(), other(x).numpy(), rtol=1e-4, atol=1e-4)


def test_auto_implementation_keeps_grouped_under_an_ipu_strategy(monkeypatch):
    """IPUs run grouped convolutions natively: under an IPU strategy 'auto' must not split
    (the Poplar SDK is not installable here, so the strategy is a stand-in of that name)."""
    class IPUStrategyV1:
        pass
    monkeypatch.setattr(tf.distribute, "has_strategy", lambda: True)
    monkeypatch.setattr(tf.distribute, "get_strategy", lambda: IPUStrategyV1())
    assert kernels.dispatch.group_conv_variant(2, 16, 16, "float32", 3, "auto") == "grouped"
    monkeypatch.undo()
    if all(d.device_type == "CPU" for d in tf.config.list_physical_devices()):
        flags = kernels.library.cpu_flags() - {"avx512f"}  # the rule for CPUs without AVX-512
        monkeypatch.setattr(kernels.library, "cpu_flags", lambda: flags)
        assert kernels.dispatch.tensorflow_conv_variant(groups=2, group_size=16) == "split"


@pytest.mark.parametrize("height,use_bias", [(7, False), (20, True), (40, False)])
def test_pointwise_conv_equals_keras_conv2d_both_paths(height, use_bias):
    # 7x7 and 20x20 run as one matmul (<= MATMUL_MAX_PIXELS = 784), 40x40 as the conv.
    x = tf.constant(np.random.default_rng(height).normal(size=(3, height, height, 24)),
                    tf.float32)
    ours = L.PointwiseConv2D(40, matmul_max_pixels=kernels.dispatch.MATMUL_MAX_PIXELS,
                             use_bias=use_bias, bias_initializer="random_normal")
    ref = keras.layers.Conv2D(40, 1, use_bias=use_bias)
    ours(x), ref(x)
    ref.set_weights(ours.get_weights())

    @tf.function
    def run(layer, v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = layer(v)
            loss = tf.reduce_sum(tf.sin(y))
        return y, tape.gradient(loss, [v] + layer.trainable_variables)

    y, grads = run(ours, x)
    y_ref, grads_ref = run(ref, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    assert len(grads) == 3 if use_bias else 2
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)
    graph = run.get_concrete_function(ours, x).graph
    types = {op.type for op in graph.get_operations()}
    assert ("MatMul" in types) == (height * height <= kernels.dispatch.MATMUL_MAX_PIXELS)
    assert ("Conv2D" in types) == (height * height > kernels.dispatch.MATMUL_MAX_PIXELS)
    # The matmul reads the kernel through a reshape: a slice's gradient would be a
    # StridedSliceGrad op per layer per step, at every resolution.
    assert "StridedSlice" not in types


def test_pointwise_conv_auto_threshold_follows_the_cpu(monkeypatch):
    # "auto": a matmul at every size on an AVX-512 CPU-only machine, else up to 784 px.
    x = tf.zeros([2, 40, 40, 8])

    def op_types():
        layer = L.PointwiseConv2D(4, use_bias=False)
        return {op.type for op in tf.function(layer).get_concrete_function(x).graph
                .get_operations()}
    monkeypatch.setattr(kernels.library, "cpu_only", lambda: True)
    for flags, matmul in (({"avx2", "fma", "avx512f"}, True), ({"avx2", "fma"}, False)):
        monkeypatch.setattr(kernels.library, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert kernels.matmul_max_pixels() == (
            sys.maxsize if matmul else kernels.dispatch.MATMUL_MAX_PIXELS)
        types = op_types()
        assert ("MatMul" in types, "Conv2D" in types) == (matmul, not matmul)
    monkeypatch.setattr(kernels.library, "cpu_flags", lambda: frozenset({"avx512f"}))
    monkeypatch.setattr(kernels.library, "cpu_only", lambda: False)  # e.g. an IPU or a GPU
    assert kernels.matmul_max_pixels() == kernels.dispatch.MATMUL_MAX_PIXELS


def test_pointwise_conv_config_round_trip_and_bad_arguments():
    layer = L.PointwiseConv2D(8, matmul_max_pixels=0, use_bias=False, name="top_conv")
    clone = L.PointwiseConv2D.from_config(layer.get_config())
    assert (clone.filters, clone.matmul_max_pixels, clone.name) == (8, 0, "top_conv")
    assert L.PointwiseConv2D.from_config(
        L.PointwiseConv2D(8).get_config()).matmul_max_pixels == "auto"
    for kwargs, field in ((dict(kernel_size=3), "kernel_size"), (dict(strides=2), "strides"),
                          (dict(matmul_max_pixels=-1), "matmul_max_pixels"),
                          (dict(matmul_max_pixels="always"), "matmul_max_pixels"),
                          (dict(data_format="channels_first"), "data_format")):
        with pytest.raises(ValueError, match=field):
            L.PointwiseConv2D(8, **kwargs)


@pytest.mark.parametrize("variant", ["grouped", "split", "ours"])
def test_mbconv_folds_proxy_norm_by_default_only_on_our_group_conv_ops(variant):
    """By default the block folds where the group conv takes the proxy mean and scale
    itself (this project's G16 ops); on TensorFlow's convolutions the plain composition is
    faster. ``fold`` True and False (the deprecated fold_proxy_norm) are obeyed either way;
    without proxy norm there is nothing to fold."""
    if variant == "ours" and not kernels.available():
        pytest.skip("needs an x86-64 CPU with AVX2+FMA and a C++ compiler")
    x = tf.zeros([2, 8, 8, 16])
    for fold, expected in ((None, variant == "ours"), (True, True), (False, False)):
        block = L.MBConvBlock(16, 16, expand_ratio=4, group_size=16, norm="ln_pn")
        block.group_conv.variant = variant
        block.fold = fold
        block(x)
        assert block.group_conv.kernel_variant == variant
        assert block.folds_proxy_norm() == expected, fold
    with pytest.warns(DeprecationWarning, match="fold_proxy_norm.*deprecated"):
        block = L.MBConvBlock(16, 16, norm="gn", fold_proxy_norm=True)
    assert not block.folds_proxy_norm()  # no PN
    with pytest.raises(ValueError, match="fold_proxy_norm must be one of"):
        L.MBConvBlock(16, 16, norm="ln_pn", fold_proxy_norm="always")
