"""The fused scale-shift-activation op that ends GN/LN/IN (layers/norm.py,
csrc/norm_activation.cc): equal to the TensorFlow composition in value and gradient, used
where it applies and only there, validated."""
import contextlib

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_ipu import models
from efficientnet_ipu import kernels
from efficientnet_ipu import layers as L
from efficientnet_ipu.layers import norm
from efficientnet_ipu.layers.proxy_norm import get_activation

needs_kernels = pytest.mark.skipif(
    not kernels.available(),
    reason="needs an x86-64 CPU with AVX2+FMA and a C++ compiler (g++ or $CXX)")
CPU_ONLY = all(d.device_type == "CPU" for d in tf.config.list_physical_devices())


def value_and_grads(x, scale, shift, weights, activation, portable, post=None):
    fn = None if activation == "linear" else get_activation(activation)
    inputs = [x, scale, shift] + list(post or [])
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        with kernels.tensorflow_only() if portable else contextlib.nullcontext():
            y = norm.scale_shift_activation(x, scale, shift, activation, fn, post=post)
        loss = tf.reduce_sum(y * weights)
    return [y] + tape.gradient(loss, inputs)


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("activation", ["swish", "relu", "gelu", "linear"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 24), (3, 4, 3, 13), (1, 1, 1, 8)])
def test_fused_op_equals_tensorflow_and_gradients(activation, shape, post):
    """13 channels: a masked tail of 5; 1x1: a single pixel. With ``post`` (proxy norm's
    per-channel affine after the activation) the op also returns its two gradients,
    summed over the batch and the pixels."""
    rng = np.random.default_rng(sum(shape))
    x = tf.constant(rng.normal(0.0, 2.0, size=shape).astype(np.float32))
    scale = tf.constant(rng.normal(size=(shape[0], shape[3])).astype(np.float32))
    shift = tf.constant(rng.normal(size=(shape[0], shape[3])).astype(np.float32))
    weights = tf.constant(rng.normal(size=shape).astype(np.float32))
    affine = None
    if post:
        affine = [tf.constant(rng.uniform(0.5, 2.0, size=shape[3]).astype(np.float32)),
                  tf.constant(rng.normal(size=shape[3]).astype(np.float32))]
    ours = value_and_grads(x, scale, shift, weights, activation, False, affine)
    ref = value_and_grads(x, scale, shift, weights, activation, True, affine)
    assert len(ours) == (6 if post else 4)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0,
                                   atol=2e-6 * float(tf.reduce_max(tf.abs(b))))


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
def test_fused_op_is_used_only_where_it_applies_and_rejects_bad_shapes():
    x = tf.zeros([2, 4, 4, 8])
    assert kernels.norm_ops_apply(x, "swish")
    assert not kernels.norm_ops_apply(tf.cast(x, tf.float16), "swish")
    assert not kernels.norm_ops_apply(x, "tanh")
    with kernels.tensorflow_only():
        assert not kernels.norm_ops_apply(x, "swish")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"scale must be \[N, C\]"):
        norm.scale_shift_activation(x, tf.zeros([2, 7]), tf.zeros([2, 8]), "swish")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"shift must be \[N, C\]"):
        norm.scale_shift_activation(x, tf.zeros([2, 8]), tf.zeros([1, 8]), "swish")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"post must be empty or \(post_scale, post_shift\), each \[C\]"):
        norm.scale_shift_activation(x, tf.zeros([2, 8]), tf.zeros([2, 8]), "swish",
                                    post=(tf.ones([2, 8]), tf.zeros([2, 8])))


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
@pytest.mark.parametrize("norm_name", ["gn", "ln_pn", "bn"])
def test_model_uses_the_op_after_gn_and_ln_and_computes_the_same_function(norm_name):
    """A B0-G16 training gradient with the fused op against the same model traced with
    TensorFlow's ops only (``portable_kernels``). BN models use it too (Keras 3).

    64 px and batch 8: BN's last stages then average 32 values per channel. At 32 px and
    batch 4 they average 4 (1x1 pixel images), and the two computations of the same
    batch-norm gradient differ by 3e-3 of the largest gradient (float32 cancellation in
    a projection onto 2 of 4 dimensions), against 3e-5 here."""
    model = models.EfficientNet("b0", group_size=16, norm=norm_name, num_classes=10,
                                input_shape=(64, 64, 3), dropout_rate=0.0,
                                drop_connect_rate=0.0)
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (8, 64, 64, 3)),
                         tf.float32)
    labels = tf.constant([1, 3, 5, 7, 0, 2, 4, 6])

    def loss_and_grads():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels, logits))
        return [loss] + tape.gradient(loss, model.trainable_variables)

    graph = tf.function(loss_and_grads).get_concrete_function().graph
    op_types = {op.type for op in graph.get_operations()}
    expected = norm_name != "bn" or L.norm._KERAS3
    assert ("EfficientnetIpuScaleShiftActivation" in op_types) == expected
    assert ("EfficientnetIpuScaleShiftActivationGrad" in op_types) == expected
    ours = loss_and_grads()
    with kernels.tensorflow_only():
        ref = loss_and_grads()
    # Gradients that cancel to about zero (a bias before a norm) differ by round-off
    # relative to the largest gradient, hence the second term.
    largest = max(float(tf.reduce_max(tf.abs(b))) for b in ref[1:])
    for a, b, in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3,
                                   atol=2e-4 * float(tf.reduce_max(tf.abs(b))) + 1e-5 * largest)


def test_group_norm_layer_rank2_and_float16_use_tensorflow_ops():
    """[N, C] inputs and float16 compute run the TensorFlow composition (the op is
    float32 NHWC only) and still normalize."""
    x = tf.constant(np.random.default_rng(1).normal(5.0, 3.0, (4, 16)), tf.float32)
    y = L.LayerNormalization()(x).numpy()
    np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=1), 1.0, atol=2e-3)
    assert not kernels.norm_ops_apply(tf.cast(x[:, None, None, :], tf.float16), "linear")


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
def test_fused_channel_moments_precision_on_a_large_offset_image():
    """A 112x112 image (B0's stage-2 size) with mean 100 and std 1: the mean and the
    variance match float64 NumPy to float32 precision (E[x^2] - E[x]^2 in float32 would
    lose the variance to cancellation here), and a batch-norm-sized reduction over 4
    single pixels with mean 100 keeps its variance too."""
    rng = np.random.default_rng(5)
    x = rng.normal(100.0, 1.0, size=(2, 112, 112, 24)).astype(np.float32)
    mean, variance = norm.channel_moments(tf.constant(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), x64.mean(axis=(1, 2)), rtol=1e-7)
    np.testing.assert_allclose(variance.numpy(), x64.var(axis=(1, 2)), rtol=1e-5)
    pixels = rng.normal(100.0, 1.0, size=(4, 1, 1, 64)).astype(np.float32)
    layer = L.NormActivation("bn", activation="linear", name="bn_linear")
    y = layer(tf.constant(pixels), training=True).numpy()
    p64 = pixels.astype(np.float64)
    expected = (p64 - p64.mean(axis=0)) / np.sqrt(p64.var(axis=0) + 1e-3)
    np.testing.assert_allclose(y, expected, atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"dmean must be \[N, C\]"):
        kernels.library.load().efficientnet_ipu_channel_moments_grad(
            tf.constant(x), mean, tf.zeros([2, 23]), tf.zeros([2, 24]), [])



@needs_kernels
@pytest.mark.parametrize("shape", [(3, 9, 11, 75), (2, 5, 5, 1030), (2, 23, 17, 40),
                                   (4, 1, 1, 3), (2, 3, 3, 0)])
def test_channel_moments_equal_float64_across_runs_and_channel_blocks(shape):
    """The moments op sums runs of up to 64 pixels per block of up to 32 channels: channel
    counts with 4-vector blocks, single vectors and a tail (75 = 64 + 8 + 3), runs that
    end inside an image (1030 channels: 7-pixel runs; 40 channels: 64-pixel runs over 391
    pixels), 1-pixel images and no channels give float64's mean and variance, offset by
    50."""
    rng = np.random.default_rng(sum(shape))
    x = (rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=shape[3]) + 50.0)
    x = x.astype(np.float32)
    mean, variance = kernels.library.load().efficientnet_ipu_channel_moments(tf.constant(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), x64.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(variance.numpy(), x64.var(axis=(1, 2)), rtol=2e-5, atol=1e-6)

@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
@pytest.mark.skipif(not L.norm._KERAS3, reason="the fused BN path is for Keras 3")
def test_batch_norm_activation_fused_equals_keras_path():
    """BN + swish through ``BatchNormalization.scale_shift`` and the fused op against the
    layers called one after the other (fused_batch_norm, then swish): training output,
    gradients, moving statistics, then inference output."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0.5, 2.0, (4, 6, 5, 24)).astype(np.float32))
    weights = tf.constant(rng.normal(size=(4, 6, 5, 24)).astype(np.float32))
    gamma, beta = rng.normal(1.0, 0.2, 24), rng.normal(0.0, 0.2, 24)
    results = []
    for portable in (False, True):
        layer = L.NormActivation("bn", activation="swish", name="bn_act")
        layer.build(x.shape)
        layer.norm_layer.gamma.assign(gamma.astype(np.float32))
        layer.norm_layer.beta.assign(beta.astype(np.float32))
        with kernels.tensorflow_only() if portable else contextlib.nullcontext():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * weights)
            grads = tape.gradient(loss, [x, layer.norm_layer.gamma, layer.norm_layer.beta])
            inference = layer(x, training=False)
        results.append([y] + grads + [layer.norm_layer.moving_mean.numpy(),
                                      layer.norm_layer.moving_variance.numpy(), inference])
    assert not np.allclose(results[0][4], 0.0)   # the moving mean moved
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                                   atol=2e-6 * float(np.abs(np.asarray(b)).max()))


def group_scale_shift_and_grads(inputs, groups, upstream, portable):
    """(scale, shift) and the gradients of sum(scale * u0 + shift * u1) with respect to
    every input (mean, variance, gamma, beta[, offset])."""
    mean, variance, gamma, beta = inputs[:4]
    offset = inputs[4] if len(inputs) > 4 else None
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        with kernels.tensorflow_only() if portable else contextlib.nullcontext():
            scale, shift = norm.group_scale_shift(mean, variance, gamma, beta, groups, 1e-3,
                                                  offset)
        loss = tf.reduce_sum(scale * upstream[0] + shift * upstream[1])
    return [scale, shift] + tape.gradient(loss, inputs)


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
@pytest.mark.parametrize("offset", [False, True])
@pytest.mark.parametrize("groups", [1, 4, 24])
def test_group_scale_shift_op_equals_tensorflow_and_gradients(groups, offset):
    """GN's [N, C] arithmetic as one op: LN (1 group), GN (4) and IN (one per channel),
    with and without a folded offset, against the TensorFlow composition, value and the
    gradient of every input. Channel means far from 0 and unequal variances, so that the
    spread of the means contributes to each group's variance."""
    rng = np.random.default_rng(groups + 10 * offset)
    n, c = 5, 24
    inputs = [tf.constant(rng.normal(3.0, 2.0, (n, c)).astype(np.float32)),
              tf.constant(rng.uniform(0.1, 4.0, (n, c)).astype(np.float32)),
              tf.constant(rng.uniform(0.5, 1.5, c).astype(np.float32)),
              tf.constant(rng.normal(size=c).astype(np.float32))]
    if offset:
        inputs.append(tf.constant(rng.normal(size=(n, c)).astype(np.float32)))
    upstream = [tf.constant(rng.normal(size=(n, c)).astype(np.float32)) for _ in range(2)]
    graph = tf.function(lambda *a: norm.group_scale_shift(
        a[0], a[1], a[2], a[3], groups, 1e-3, a[4] if offset else None)).get_concrete_function(
            *inputs).graph
    assert "EfficientnetIpuGroupScaleShift" in {op.type for op in graph.get_operations()}
    ours = group_scale_shift_and_grads(inputs, groups, upstream, portable=False)
    ref = group_scale_shift_and_grads(inputs, groups, upstream, portable=True)
    assert len(ours) == 2 + len(inputs)
    # Under IN the offset's gradient is exactly 0 in TensorFlow and round-off here.
    largest = max(float(tf.reduce_max(tf.abs(b))) for b in ref)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=1e-6 * largest)


def batch_norm_statistics_and_grads(inputs, upstream, portable):
    """batch_norm_statistics' four outputs and the gradients of sum(scale * u0 + shift *
    u1) with respect to mean, variance, gamma and beta."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        with kernels.tensorflow_only() if portable else contextlib.nullcontext():
            outputs = norm.batch_norm_statistics(*inputs, momentum=0.9, epsilon=1e-3)
        loss = tf.reduce_sum(outputs[0] * upstream[0] + outputs[1] * upstream[1])
    return list(outputs) + tape.gradient(loss, inputs[:4])


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
@pytest.mark.parametrize("n", [1, 7])
def test_batch_norm_statistics_op_equals_tensorflow_and_gradients(n):
    """BN's [N, C] arithmetic and moving averages as one op, against the TensorFlow
    composition: the four outputs and the gradients of mean, variance, gamma and beta.
    Example means far from 0, so that their spread over the batch is part of the batch's
    variance; one example (N = 1), where that spread is 0."""
    rng = np.random.default_rng(n)
    c = 19
    inputs = [tf.constant(rng.normal(3.0, 2.0, (n, c)).astype(np.float32)),
              tf.constant(rng.uniform(0.1, 4.0, (n, c)).astype(np.float32)),
              tf.constant(rng.uniform(0.5, 1.5, c).astype(np.float32)),
              tf.constant(rng.normal(size=c).astype(np.float32)),
              tf.constant(rng.normal(size=c).astype(np.float32)),
              tf.constant(rng.uniform(0.5, 2.0, c).astype(np.float32))]
    upstream = [tf.constant(rng.normal(size=c).astype(np.float32)) for _ in range(2)]
    graph = tf.function(lambda *a: norm.batch_norm_statistics(
        *a, momentum=0.9, epsilon=1e-3)).get_concrete_function(*inputs).graph
    assert "EfficientnetIpuBatchNormStatistics" in {op.type for op in graph.get_operations()}
    ours = batch_norm_statistics_and_grads(inputs, upstream, portable=False)
    ref = batch_norm_statistics_and_grads(inputs, upstream, portable=True)
    assert len(ours) == 8
    # The moving averages by hand: 0.9 moving + 0.1 batch (biased variance).
    x_mean = inputs[0].numpy().mean(0)
    x_var = (inputs[1].numpy() + (inputs[0].numpy() - x_mean) ** 2).mean(0)
    np.testing.assert_allclose(ours[2], 0.9 * inputs[4].numpy() + 0.1 * x_mean, atol=1e-6)
    np.testing.assert_allclose(ours[3], 0.9 * inputs[5].numpy() + 0.1 * x_var, rtol=1e-5)
    largest = max(float(tf.reduce_max(tf.abs(b))) for b in ref)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=1e-6 * largest)


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
def test_batch_norm_statistics_op_rejects_bad_shapes():
    nc, c = tf.ones([2, 8]), tf.ones([8])
    with pytest.raises(tf.errors.InvalidArgumentError, match="mean and variance must be"):
        norm.batch_norm_statistics(nc, tf.ones([2, 4]), c, c, c, c, 0.9, 1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="N >= 1"):
        norm.batch_norm_statistics(tf.ones([0, 8]), tf.ones([0, 8]), c, c, c, c, 0.9, 1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"moving_variance must be \[C\] = \[8\]"):
        norm.batch_norm_statistics(nc, nc, c, c, c, tf.ones([4]), 0.9, 1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="epsilon must be > 0"):
        norm.batch_norm_statistics(nc, nc, c, c, c, c, 0.9, 0.0)


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
def test_group_scale_shift_op_rejects_bad_shapes_and_groups():
    nc, c = tf.ones([2, 8]), tf.ones([8])
    with pytest.raises(tf.errors.InvalidArgumentError, match="mean and variance must be"):
        norm.group_scale_shift(nc, tf.ones([2, 4]), c, c, 1, 1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"gamma and beta must be \[C\]"):
        norm.group_scale_shift(nc, nc, tf.ones([4]), c, 1, 1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="groups=3 must divide the 8"):
        norm.group_scale_shift(nc, nc, c, c, 3, 1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"offset must be empty or one"):
        norm.group_scale_shift(nc, nc, c, c, 2, 1e-3, offset=tf.ones([1, 8]))


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
@pytest.mark.parametrize("shape", [(2, 5, 7, 24), (3, 4, 3, 13), (1, 1, 1, 8)])
def test_channel_gate_op_equals_tensorflow_and_gradients(shape):
    """The squeeze-excite gate x * gate[n, c] as one op (blocks.channel_gate): value, dx
    and dgate equal TensorFlow's broadcast multiply; 13 channels is a masked tail."""
    rng = np.random.default_rng(sum(shape) + 1)
    x = tf.constant(rng.normal(1.0, 2.0, size=shape).astype(np.float32))
    gate = tf.constant(rng.uniform(0.0, 1.0, size=(shape[0], shape[3])).astype(np.float32))
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))

    def value_and_grads(portable):
        with tf.GradientTape() as tape:
            tape.watch([x, gate])
            with kernels.tensorflow_only() if portable else contextlib.nullcontext():
                y = L.blocks.channel_gate(x, gate)
            loss = tf.reduce_sum(y * upstream)
        return [y] + tape.gradient(loss, [x, gate])

    graph = tf.function(L.blocks.channel_gate).get_concrete_function(x, gate).graph
    assert "EfficientnetIpuChannelGate" in {op.type for op in graph.get_operations()}
    for a, b in zip(value_and_grads(False), value_and_grads(True)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-6 * float(tf.reduce_max(tf.abs(b))))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"gate must be \[N, C\]"):
        L.blocks.channel_gate(x, tf.transpose(gate) if shape[0] > 1 else gate[:, :4])


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
@pytest.mark.parametrize("shape,folded", [((3, 5, 7, 24), False), ((2, 4, 3, 13), True),
                                          ((2, 1, 1, 8), True)])
def test_squeeze_excite_gradient_equals_tensorflow(shape, folded):
    """SqueezeExcite's own gradient (blocks.squeeze_excite: the squeeze's share added to dx
    in place, no full-size Tile, Mul or AddN) against TensorFlow's, for the input, the four
    weights and, as in the folded proxy norm, the gate's scale and center with a gradient
    reaching the gate from outside; 13 channels is a masked tail."""
    rng = np.random.default_rng(sum(shape) + folded)
    x = tf.constant(rng.normal(1.0, 2.0, size=shape).astype(np.float32))
    se = L.SqueezeExcite(4)
    se(x)
    scale = tf.constant(rng.uniform(0.5, 2.0, shape[3]).astype(np.float32)) if folded else None
    center = tf.constant(rng.normal(size=shape[3]).astype(np.float32)) if folded else None
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
    gate_upstream = tf.constant(rng.normal(size=(shape[0], shape[3])).astype(np.float32))
    sources = [x] + se.trainable_variables + ([scale, center] if folded else [])

    @tf.function
    def value_and_grads():
        with tf.GradientTape() as tape:
            tape.watch([t for t in sources if isinstance(t, tf.Tensor)])
            y, gate = se.gated(x, scale, center)
        outputs, grads = [y, gate], [upstream, gate_upstream]
        if not folded:  # the gate feeds nothing else
            outputs, grads = [y], [upstream]
        return [y, gate] + tape.gradient(outputs, sources, output_gradients=grads)

    graph = value_and_grads.get_concrete_function().graph
    types = [op.type for op in graph.get_operations()]
    assert "EfficientnetIpuAddChannelBias" in types and "Tile" not in types
    ours = value_and_grads()
    with kernels.override(norm_ops=False):
        value_and_grads = tf.function(value_and_grads.python_function)
        ref = value_and_grads()
    assert "EfficientnetIpuAddChannelBias" not in {
        op.type for op in value_and_grads.get_concrete_function().graph.get_operations()}
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-5 * float(tf.reduce_max(tf.abs(b))))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"bias must be \[N, C\]"):
        kernels.library.load().efficientnet_ipu_add_channel_bias(x, tf.zeros([shape[0], 3]))


@needs_kernels
@pytest.mark.skipif(not CPU_ONLY, reason="the fused op is chosen on CPU-only machines")
def test_tensorflow_norm_ops_context_traces_the_benchmark_baseline():
    """``benchmark --compare-norm-ops`` traces its baseline in ``kernels.override(norm_ops=False)``:
    none of the normalization / gate ops there, all of them (and their gradients) in the
    default trace; the proxy statistics keep their own switch; the context restores."""
    from efficientnet_ipu import benchmark
    model = models.EfficientNet("b0", group_size=16, norm="ln_pn", num_classes=10,
                                input_shape=(32, 32, 3))
    names = {"EfficientnetIpu" + name + grad
             for name in ("ScaleShiftActivation", "ChannelMoments", "GroupScaleShift",
                          "ChannelGate") for grad in ("", "Grad")}
    # The norms' moments pass their input through to the scale-shift-activation.
    names = names - {"EfficientnetIpuChannelMoments"} | {"EfficientnetIpuChannelMomentsThrough"}

    def op_types(bench):
        graph = bench.train_step.get_concrete_function().graph
        return {op.type for op in graph.get_operations()}

    fused = op_types(benchmark.ModelBench(model, 2, 32))
    baseline = op_types(benchmark.ModelBench(model, 2, 32,
                                             trace_context=lambda: kernels.override(norm_ops=False)))
    assert names <= fused
    assert not names & baseline
    assert "EfficientnetIpuProxyMeanScale" in baseline
    assert kernels.dispatch.statistics_ops_apply("auto")
