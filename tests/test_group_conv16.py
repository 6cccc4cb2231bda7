"""The AVX2 group-convolution kernels (layers/group_conv16.py, csrc/group_conv16.cc): equal to
TensorFlow's convolutions in value and gradient, chosen by GroupConv2D where they apply, and
kept out of exported SavedModels."""
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow import keras

from conftest import reference_group_conv
from efficientnet_ipu import export, models
from efficientnet_ipu import layers as L
from efficientnet_ipu import kernels
from efficientnet_ipu.kernels import conv_ops

needs_kernels = pytest.mark.skipif(
    not kernels.available(),
    reason="needs an x86-64 CPU with AVX2+FMA and a C++ compiler (g++ or $CXX)")


KERNEL_CASES = [
    ((2, 9, 11, 32), 3, 1, "SAME"),      # odd sizes, column tail of 5 = 11 - 6
    ((2, 9, 11, 32), 3, 2, "SAME"),
    ((3, 8, 8, 48), 5, 2, "SAME"),       # even size, stride 2: padding 1 before, 2 after
    ((1, 7, 7, 64), 5, 1, "SAME"),       # B0's 7 px stage: most taps at a border
    ((2, 10, 7, 32), 3, 1, "VALID"),
    ((2, 11, 10, 32), 5, 2, "VALID"),
    ((1, 14, 13, 16), 3, 3, "SAME"),     # one group, stride 3
    ((1, 18, 17, 16), 5, 1, "SAME"),     # kernel gradient: five passes of 4 output rows
    ((2, 1, 1, 32), 3, 1, "SAME"),       # only the centre tap
    ((2, 6, 28, 32), 3, 2, "SAME"),      # stride 2, 14 output columns (AVX-512: one block)
    ((1, 5, 26, 16), 3, 1, "VALID"),     # 24 columns: two blocks of 12 (AVX-512)
    ((1, 4, 27, 16), 3, 1, "SAME"),      # 27 columns: blocks of 14 and 13 (AVX-512)
    ((9, 5, 5, 32), 5, 1, "SAME"),       # 5x5 kernel on 5x5 px: padding columns skipped
    ((2, 2, 3, 32), 5, 2, "SAME"),
    # 3x3, stride 1, SAME on AVX-512: Winograd F(2x2, 3x3), 2x2 output tiles in chunks of
    # up to 14 tiles, from 100 px (forward, input gradient) and 400 px (kernel gradient);
    # (1, 4, 27, 16) above is one at 108 px
    ((3, 10, 10, 32), 3, 1, "SAME"),     # 100 px: the direct kernel gradient
    ((2, 28, 30, 32), 3, 1, "SAME"),     # 14 x 15 tiles: chunks across tile rows
    ((1, 1, 401, 16), 3, 1, "SAME"),     # one row: every tile at the top and bottom border
    ((1, 7, 61, 32), 3, 1, "SAME"),      # odd: the last tile row and column half outside
    ((2, 21, 23, 16), 3, 1, "SAME"),
    # 5x5, stride 1, SAME on AVX-512: Winograd F(2x2, 5x5) in the forward and the input
    # gradient from 100 px, before the image-stacked blocks; (1, 18, 17, 16) above is one
    # at 306 px, (9, 5, 5, 32) a stacked one
    ((4, 10, 10, 32), 5, 1, "SAME"),     # 100 px: B0's 10 px stage (at 160 px), not stacked
    ((3, 9, 10, 16), 5, 1, "SAME"),      # 90 px: stacked
    ((2, 14, 14, 32), 5, 1, "SAME"),     # 196 px: B0's 14 px stage
    ((1, 1, 203, 16), 5, 1, "SAME"),     # one row: two rows of padding above and below
    ((2, 15, 17, 48), 5, 1, "SAME"),     # odd: the last tile row and column half outside
    ((1, 28, 30, 16), 5, 1, "SAME"),     # 14 x 15 tiles: chunks across tile rows
    # The kernel gradient's per-group pass on AVX-512, for images of at most 196 px in and
    # 100 px out (most of the cases above); spans of 8 images: (9, 5, 5, 32) above is 8 + 1
    ((11, 7, 7, 48), 3, 1, "SAME"),      # B0's 7 px 3x3 stage: 8 + 3 images, 3 groups
    ((10, 14, 14, 16), 5, 2, "SAME"),    # 196 px in, 49 out
]


@needs_kernels
@pytest.mark.parametrize("shape,k,stride,padding", KERNEL_CASES)
def test_kernels_equal_tensorflow_convolution_and_its_gradients(shape, k, stride, padding):
    rng = np.random.default_rng(sum(shape) + k + stride)
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(k, k, 16, shape[-1])).astype(np.float32))
    offset = tf.constant(rng.normal(size=shape[-1]).astype(np.float32))  # not on the padding
    in_scale = tf.constant(rng.uniform(-2.0, 2.0, size=shape[-1]).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, kernel, offset, in_scale])
        ours = conv_ops.group_conv16(x, kernel, stride, padding, offset, in_scale)
        ref = reference_group_conv((x + offset) * in_scale, kernel, stride, shape[-1] // 16,
                                   padding)
        weights = tf.constant(rng.normal(size=ref.shape).astype(np.float32))
        loss_ours = tf.reduce_sum(ours * weights)
        loss_ref = tf.reduce_sum(ref * weights)
    assert ours.shape == ref.shape
    scale = float(tf.reduce_max(tf.abs(ref)))
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=0, atol=1e-5 * scale)
    for a, b in zip(tape.gradient(loss_ours, [x, kernel, offset, in_scale]),
                    tape.gradient(loss_ref, [x, kernel, offset, in_scale])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0,
                                   atol=1e-5 * float(tf.reduce_max(tf.abs(b))))


@needs_kernels
def test_kernels_reject_shapes_they_do_not_compute():
    x = tf.zeros([1, 8, 8, 24])
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiple of 16"):
        conv_ops.group_conv16(x, tf.zeros([3, 3, 16, 24]), 1, "SAME")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[k, k, 16, C\]"):
        conv_ops.group_conv16(tf.zeros([1, 8, 8, 32]), tf.zeros([3, 3, 8, 32]), 1, "SAME")


@needs_kernels
@pytest.mark.parametrize("strides,with_scale", [(1, False), (2, True)])
def test_group_conv2d_avx2_equals_split_in_a_tf_function(strides, with_scale):
    """The layer path (kernel cast, folded input scale and offset, graph mode) against
    'split'."""
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(size=(4, 12, 12, 64)).astype(np.float32))
    scale = tf.Variable(rng.uniform(0.5, 2.0, size=64).astype(np.float32)) if with_scale else None
    offset = tf.Variable(rng.normal(size=64).astype(np.float32)) if with_scale else None
    avx2 = L.GroupConv2D(64, 3, strides=strides, group_size=16, implementation="avx2")
    split = L.GroupConv2D(64, 3, strides=strides, group_size=16, implementation="split")
    avx2(x)
    split(x)
    split.set_weights(avx2.get_weights())

    @tf.function
    def grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, input_scale=scale, input_offset=offset)
            loss = tf.reduce_sum(tf.sin(y))
        sources = [x, layer.kernel] + ([offset, scale] if offset is not None else [])
        return [y] + tape.gradient(loss, sources)
    graph = grads.get_concrete_function(avx2).graph
    assert any(op.type == "EfficientnetIpuGroupConv16" for op in graph.get_operations())
    # The scale goes into the ops as they pack the kernel: no kernel-sized op of its own
    # (a Mul with its gradient's Mul and Sum, and Transposes,).
    kernel_sized = [op.type for op in graph.get_operations()
                    if op.type in ("Mul", "Transpose", "Sum")
                    and op.inputs[0].shape.as_list()[:3] == [3, 3, 16]]  # [3, 3, 16, ...]
    assert kernel_sized == []
    for a, b in zip(grads(avx2), grads(split)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_forcing_our_ops_rejects_layers_they_do_not_compute():
    def build(*args, dtype=None, **kwargs):
        layer = L.GroupConv2D(*args, dtype=dtype, **kwargs)
        layer.variant = "ours"
        return layer
    with pytest.raises(ValueError, match="group_size 16"):
        build(48, 3, group_size=8)(tf.zeros([1, 4, 4, 48]))
    with pytest.raises(ValueError, match="2 filters per group"):
        build(64, 3, group_size=16)(tf.zeros([1, 4, 4, 32]))
    with pytest.raises(ValueError, match="float16"):
        build(32, 3, group_size=16, dtype="mixed_float16")(tf.zeros([1, 4, 4, 32], tf.float16))


def test_auto_chooses_our_ops_only_where_they_apply(monkeypatch):
    cpu_only = all(d.device_type == "CPU" for d in tf.config.list_physical_devices())

    def choose(groups, group_size, filters_per_group, dtype, mode="auto"):
        return kernels.dispatch.group_conv_variant(groups, group_size, filters_per_group,
                                                   dtype, 3, mode)
    flags = kernels.library.cpu_flags()
    monkeypatch.setattr(kernels.library, "cpu_flags", lambda: flags - {"avx512f"})
    if cpu_only and kernels.available():
        assert choose(15, 16, 16, "float32") == "ours"
        assert choose(48, 16, 16, "float32") == "ours"
    assert choose(15, 16, 16, "float32", "tensorflow") in ("split", "grouped")
    assert choose(15, 16, 16, "float16") != "ours"     # mixed precision
    assert choose(15, 16, 2, "float32") != "ours"      # channel multiplier 2
    assert choose(6, 8, 8, "float32") != "ours"
    with kernels.tensorflow_only():
        assert choose(15, 16, 16, "float32") == "reference"
    # Without a compiler 'auto' keeps TensorFlow's convolutions (with a warning).
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert not kernels.available()
    assert choose(15, 16, 16, "float32") in ("split", "grouped")


@needs_kernels
def test_missing_compiler_is_a_clear_error_for_forced_ops(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels.library, "_library", None)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    layer = L.GroupConv2D(32, 3, group_size=16)
    layer.variant = "ours"
    with pytest.raises(RuntimeError, match="g\\+\\+"):
        layer(tf.zeros([1, 4, 4, 32]))


@needs_kernels
def test_export_traces_tensorflow_ops_and_serves_the_same_function(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(32, 1)(inputs)
    x = L.GroupConv2D(32, 3, group_size=16, implementation="avx2")(x)
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    assert model.layers[2].kernel_variant == "ours"
    path = export.export_saved_model(model, str(tmp_path), 1, 16, [])
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        graph = f.read()
    assert b"EfficientnetIpuGroupConv16" not in graph
    assert b"Conv2D" in graph
    images = tf.constant(np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3)), tf.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](images=images)
    pixels = export.data.resize_and_center_crop(images, 16)
    expected = tf.nn.softmax(model(pixels, training=False))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected.numpy(), atol=1e-5)
    # The layer still runs on the kernels after the export.
    assert not kernels.settings.forced_tensorflow()


DEPRECATED = [dict(conv_implementation="tensorflow"), dict(proxy_implementation="tensorflow"),
              dict(fold_proxy_norm=False),
              dict(conv_implementation="auto", proxy_implementation="fused",
                   fold_proxy_norm="auto")]


def test_kernels_option_and_deprecated_names_build_the_same_model():
    """``kernels`` "auto" and "tensorflow" and the deprecated speed options build models
    with the same weights (same seed) and the same outputs; the deprecated names warn, and
    bad values of either are errors naming the field."""
    with pytest.raises(ValueError, match="kernels must be one of"):
        models.EfficientNet("b0", kernels="fast")
    with pytest.raises(ValueError, match="conv_implementation must be one of"):
        models.EfficientNet("b0", group_size=16, conv_implementation="fast")
    kwargs = dict(size="b0", group_size=16, norm="ln_pn", num_classes=10, dropout_rate=0.0,
                  drop_connect_rate=0.0)
    keras.utils.set_random_seed(5)
    auto = models.EfficientNet(**kwargs)
    keras.utils.set_random_seed(5)
    portable = models.EfficientNet(kernels="tensorflow", **kwargs)
    olds = []
    for deprecated in DEPRECATED:
        keras.utils.set_random_seed(5)
        with pytest.warns(DeprecationWarning, match="deprecated"):
            olds.append(models.EfficientNet(**kwargs, **deprecated))
    for model in [portable] + olds:
        assert len(auto.get_weights()) == len(model.get_weights())
        for a, b in zip(auto.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def variants(model):
        return {layer.kernel_variant for layer in models.iter_layers(model)
                if isinstance(layer, L.GroupConv2D)}
    assert variants(portable) <= {"split", "grouped"}
    cpu_only = all(d.device_type == "CPU" for d in tf.config.list_physical_devices())
    if cpu_only and kernels.available():
        assert variants(auto) == {"ours"}  # every B0-G16 group conv has 16 per group
    x = tf.constant(np.random.default_rng(4).uniform(0, 255, (2, 64, 64, 3)), tf.float32)
    expected = auto(x, training=True).numpy()
    for model in [portable] + olds:
        np.testing.assert_allclose(model(x, training=True).numpy(), expected, rtol=1e-3,
                                   atol=1e-3)


@needs_kernels
@pytest.mark.skipif("avx512f" not in kernels.library.cpu_flags(),
                    reason="this CPU has no AVX-512F: the AVX2 blocks are the ones the other "
                           "tests ran")
@pytest.mark.parametrize("variable", ["EFFICIENTNET_IPU_AVX2_ONLY=1",
                                      "EFFICIENTNET_IPU_WINOGRAD=0",
                                      "EFFICIENTNET_IPU_PER_GROUP=0"])
def test_other_blocks_also_equal_tensorflow_on_an_avx512_cpu(variable):
    """On an AVX-512 CPU the other tests ran the AVX-512 blocks, with Winograd for 3x3 and
    5x5 kernels at stride 1 and the kernel gradient's per-group pass on small images. The
    AVX2 blocks (what AVX2-only CPUs run, selected by $EFFICIENTNET_IPU_AVX2_ONLY), the
    direct AVX-512 blocks for those kernels ($EFFICIENTNET_IPU_WINOGRAD=0) and the general
    kernel-gradient pass on small images ($EFFICIENTNET_IPU_PER_GROUP=0) must give the
    same results."""
    import subprocess
    import sys
    name, value = variable.split("=")
    env = dict(os.environ, **{name: value})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "kernels_equal_tensorflow or avx2_equals_split"],
        env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "%d passed" % (len(KERNEL_CASES) + 2) in done.stdout
