"""The fused proxy-statistics op (layers/proxy_norm.py, csrc/proxy_norm.cc): equal to the
TensorFlow composition in value and gradient, chosen by ProxyNormActivation where it
applies, validated, and kept out of exported SavedModels."""
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow import keras

from efficientnet_ipu import config as config_lib
from efficientnet_ipu import export, models
from efficientnet_ipu import kernels
from efficientnet_ipu import layers as L
from efficientnet_ipu.layers import proxy_norm

needs_kernels = pytest.mark.skipif(
    not kernels.available(),
    reason="needs an x86-64 CPU with AVX2+FMA and a C++ compiler (g++ or $CXX)")
CPU_ONLY = all(d.device_type == "CPU" for d in tf.config.list_physical_devices())


def perturbed_layer(activation, num_samples, channels, seed, **kwargs):
    """A built ProxyNormActivation whose four parameters are moved away from their
    initial values (so every term of the gradient is exercised)."""
    rng = np.random.default_rng(seed)
    layer = L.ProxyNormActivation(activation, num_proxy_samples=num_samples, **kwargs)
    layer.build((None, 4, 4, channels))
    for weight, spread in zip(layer.weights, (0.5, 1.0, 0.3, 0.3)):
        weight.assign(weight.numpy() + spread * rng.normal(size=channels).astype(np.float32))
    return layer


def fused_proxy_mean_scale(gamma, beta, proxy_gamma, proxy_beta, quantiles, activation,
                           epsilon):
    """The fused op itself (``kernels.proxy_mean_scale`` without its dispatch)."""
    mean, scale, _ = kernels.library.load().efficientnet_ipu_proxy_mean_scale(
        gamma, beta, proxy_gamma, proxy_beta, quantiles,
        activation=kernels.dispatch.FUSED_ACTIVATIONS[activation], epsilon=float(epsilon))
    return mean, scale


@needs_kernels
@pytest.mark.parametrize("activation", ["swish", "relu", "gelu", "linear"])
@pytest.mark.parametrize("num_samples", [200, 13])   # 13: not a multiple of 8 (masked tail)
# With 200 samples the ops run 37 channels on one thread and 300 split across the workers
# (their ParallelFor cost estimates); both must give the same values.
@pytest.mark.parametrize("channels", [37, 300])
def test_fused_statistics_equal_tensorflow_and_gradients(activation, num_samples, channels):
    layer = perturbed_layer(activation, num_samples, channels, seed=num_samples,
                            kernels="tensorflow")
    rng = np.random.default_rng(1)
    weigh_mean, weigh_scale = (tf.constant(rng.normal(size=channels).astype(np.float32))
                               for _ in range(2))

    def run(fused):
        with tf.GradientTape() as tape:
            if fused:
                mean, scale = fused_proxy_mean_scale(
                    layer.gamma, layer.beta, layer.proxy_gamma, layer.proxy_beta,
                    tf.constant(layer.quantiles), activation, layer.proxy_epsilon)
            else:
                mean, scale = layer.proxy_mean_scale()
            loss = tf.reduce_sum(mean * weigh_mean) + tf.reduce_sum(scale * weigh_scale)
        return [mean, scale] + tape.gradient(loss, layer.weights)

    names = ["mean", "scale", "d gamma", "d beta", "d proxy_gamma", "d proxy_beta"]
    for name, ours, reference in zip(names, run(True), run(False)):
        reference = reference.numpy()
        assert np.abs(reference).max() > 1e-3, name   # the check is not vacuous
        np.testing.assert_allclose(ours.numpy(), reference, rtol=2e-5,
                                   atol=2e-5 * np.abs(reference).max(), err_msg=name)


@needs_kernels
@pytest.mark.parametrize("mode,proxy_params", [("normalize", True), ("split", False),
                                               ("center", True)])
def test_layer_in_graph_mode_same_function_either_implementation(mode, proxy_params):
    fused = perturbed_layer("swish", 200, 24, seed=5, mode=mode, proxy_params=proxy_params,
                            kernels="auto")
    plain = L.ProxyNormActivation("swish", mode=mode, proxy_params=proxy_params,
                                  kernels="tensorflow")
    plain.build((None, 4, 4, 24))
    plain.set_weights(fused.get_weights())
    assert (fused.kernels, plain.kernels) == ("auto", "tensorflow")
    x = tf.constant(np.random.default_rng(6).normal(size=(3, 4, 4, 24)).astype(np.float32))

    @tf.function
    def step(layer):
        with tf.GradientTape() as tape:
            out = layer(x)
            out = out[0] * out[1] if mode == "split" else out
            loss = tf.reduce_sum(out * tf.sin(x))
        return out, tape.gradient(loss, layer.trainable_weights)

    out_fused, grads_fused = step(fused)
    out_plain, grads_plain = step(plain)
    np.testing.assert_allclose(out_fused.numpy(), out_plain.numpy(), rtol=1e-5, atol=1e-5)
    assert len(grads_fused) == (4 if proxy_params else 2)
    for ours, reference in zip(grads_fused, grads_plain):
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-4, atol=1e-4)


@needs_kernels
def test_fused_op_rejects_bad_shapes_and_activations():
    c = tf.ones([8])
    with pytest.raises(tf.errors.InvalidArgumentError, match="vector of 8 channels"):
        fused_proxy_mean_scale(c, c, c, tf.ones([7]), tf.ones([20]), "swish", 0.03)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2"):
        fused_proxy_mean_scale(c, c, c, c, tf.ones([1]), "swish", 0.03)
    assert not kernels.dispatch.proxy_op_applies("tanh", "auto")  # not an op activation


def test_auto_choice_bad_values_and_missing_compiler(monkeypatch):
    with pytest.raises(ValueError, match="implementation must be one of"):
        L.ProxyNormActivation(implementation="fast")
    with pytest.raises(ValueError, match="kernels must be one of"):
        L.ProxyNormActivation(kernels="fused")
    with pytest.raises(ValueError, match="proxy_implementation must be one of"):
        L.NormActivation("gn", proxy_implementation="fast")
    with pytest.raises(ValueError, match="proxy_implementation must be one of"):
        models.EfficientNet("b0", norm="ln_pn", proxy_implementation="fast")
    config = config_lib.base_config()
    config.model.kernels = "fast"
    with pytest.raises(ValueError, match="config.model.kernels must be one of"):
        config_lib.validate(config)
    assert kernels.dispatch.proxy_op_applies("swish", "auto") == (
        CPU_ONLY and kernels.available())
    assert not kernels.dispatch.proxy_op_applies("swish", "tensorflow")
    # Without a compiler "auto" keeps TensorFlow ops (with a warning).
    monkeypatch.setattr(kernels.library, "_library", None)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert not kernels.dispatch.proxy_op_applies("swish", "auto")
    layer = L.ProxyNormActivation()
    layer.build((None, 2, 2, 8))
    graph = tf.function(layer.proxy_mean_scale).get_concrete_function().graph
    assert "EfficientnetIpuProxyMeanScale" not in {op.type for op in graph.get_operations()}


@needs_kernels
def test_model_same_function_export_portable(tmp_path):
    """B0-G4-LN+PN (TensorFlow's convolutions, so only the proxy op is ours) with the fused
    statistics equals the TensorFlow composition in output and gradients; its SavedModel
    holds no custom op and serves the same probabilities."""
    kwargs = dict(group_size=4, norm="ln_pn", num_classes=10, dropout_rate=0.0,
                  drop_connect_rate=0.0)   # deterministic training step
    fused = models.EfficientNet("b0", **kwargs)
    plain = models.EfficientNet("b0", kernels="tensorflow", **kwargs)
    plain.set_weights(fused.get_weights())

    def op_types(model):
        graph = tf.function(lambda t: model(t, training=True)).get_concrete_function(
            tf.TensorSpec([2, 48, 48, 3])).graph
        return {op.type for op in graph.get_operations()}
    assert "EfficientnetIpuProxyMeanScale" not in op_types(plain)
    if CPU_ONLY:
        assert "EfficientnetIpuProxyMeanScale" in op_types(fused)
    x = tf.constant(np.random.default_rng(8).uniform(0, 255, (2, 48, 48, 3)), tf.float32)
    labels = tf.constant([3, 7])

    def loss_and_grads(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, model(x, training=True), from_logits=True))
        return loss, tape.gradient(loss, model.trainable_weights)

    loss_fused, grads_fused = loss_and_grads(fused)
    loss_plain, grads_plain = loss_and_grads(plain)
    np.testing.assert_allclose(loss_fused.numpy(), loss_plain.numpy(), rtol=1e-4)
    proxy_grads = 0
    for weight, ours, reference in zip(fused.trainable_weights, grads_fused, grads_plain):
        scale = np.abs(reference.numpy()).max() + 1e-6
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-3,
                                   atol=1e-3 * scale, err_msg=weight.name)
        proxy_grads += "proxy_gamma" in weight.name
    assert proxy_grads == 33   # stem, block1a (no expand), 15 blocks x 2, top: all checked
    path = export.export_saved_model(fused, str(tmp_path), 1, 48, [])
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        assert b"EfficientnetIpu" not in f.read()
    images = tf.constant(np.random.default_rng(9).integers(0, 256, (2, 48, 48, 3)), tf.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](images=images)
    expected = tf.nn.softmax(fused(export.data.resize_and_center_crop(images, 48),
                                   training=False))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected.numpy(), atol=1e-5)
    # The export for Python serving on CPU (portable=False) runs the project's ops and
    # serves the same probabilities; load_saved_model loads the op library it needs.
    fast = export.export_saved_model(fused, str(tmp_path / "ops"), 1, 48, [], portable=False)
    assert os.path.exists(os.path.join(fast, "assets", export.CPU_OPS_FILE))
    if CPU_ONLY and kernels.available():
        with open(os.path.join(fast, "saved_model.pb"), "rb") as f:
            assert b"EfficientnetIpu" in f.read()
    served_fast = export.load_saved_model(fast).signatures["serving_default"](images=images)
    np.testing.assert_allclose(served_fast["probabilities"].numpy(), expected.numpy(),
                               atol=1e-5)


def test_constant_statistics_trace_the_proxy_moments_as_constants():
    """Within ``constant_statistics`` (the export) the traced layer holds its proxy mean and
    scale as constants of the weights at trace time: no [n, C] quantile pass in the graph,
    the same output, and later weight changes do not reach the traced function."""
    layer = L.ProxyNormActivation(kernels="tensorflow")
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 4, 4, 8)), tf.float32)
    layer(x)
    layer.proxy_gamma.assign(np.linspace(-0.2, 0.2, 8))
    layer.beta.assign(np.linspace(-1.0, 1.0, 8))
    expected = layer(x).numpy()

    def quantile_ops(graph):
        return [op for op in graph.get_operations() if op.outputs and
                op.outputs[0].shape.rank == 2 and op.outputs[0].shape[0] == 200]
    live = tf.function(lambda t: layer(t)).get_concrete_function(x)
    assert quantile_ops(live.graph)
    with proxy_norm.constant_statistics():
        frozen = tf.function(lambda t: layer(t)).get_concrete_function(x)
    assert not quantile_ops(frozen.graph)
    np.testing.assert_allclose(frozen(x).numpy(), expected, rtol=1e-6, atol=1e-6)
    layer.proxy_beta.assign(np.full(8, 0.3))
    np.testing.assert_allclose(frozen(x).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(live(x).numpy(), expected, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("group_size", [1, 16])
@pytest.mark.parametrize("norm", ["bn", "gn", "ln_pn", "gn_pn"])
def test_export_serves_the_keras_models_probabilities_on_real_jpegs(tmp_path, imagenet_images,
                                                                     norm, group_size):
    """The portable export (TensorFlow's ops, proxy-norm statistics as constants) computes
    the Keras model's function, for each norm family and for G1 and G16, on real JPEGs at
    the export's size (trained-like weights: every norm and proxy parameter moved off its
    initial value)."""
    model = models.EfficientNet("b0", group_size=group_size, norm=norm, num_classes=10)
    rng = np.random.default_rng(group_size)
    for weight in model.weights:
        name = weight.name.split("/")[-1]
        if name.startswith(("gamma", "beta", "proxy_", "moving_")):
            value = weight.numpy()
            shift = rng.uniform(-0.3, 0.3, value.shape).astype(value.dtype)
            weight.assign(np.abs(value + shift) + 0.5 if name == "moving_variance"
                          else value + shift)
    path = export.export_saved_model(model, str(tmp_path), 1, 96, [])
    serve = export.load_saved_model(path).signatures["serving_default"]
    for jpeg in imagenet_images[:3]:
        image = tf.io.decode_jpeg(tf.io.read_file(jpeg), channels=3)
        served = serve(images=image[None])["probabilities"].numpy()
        expected = tf.nn.softmax(model(export.data.resize_and_center_crop(image[None], 96),
                                       training=False)).numpy()
        np.testing.assert_allclose(served, expected, atol=2e-5, err_msg=jpeg)
