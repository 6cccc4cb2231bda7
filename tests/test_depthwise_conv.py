"""The depthwise-convolution gradient kernels (layers/depthwise_conv.py,
csrc/depthwise_conv.cc): equal to the gradients of a direct float64 computation for every
kernel size they take, strides 1-3 and both paddings; GroupConv2D with group size 1 uses
them where they apply, with TensorFlow's function and gradients."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_ipu import layers as L
from efficientnet_ipu import kernels
from efficientnet_ipu.kernels import conv_ops

needs_kernels = pytest.mark.skipif(
    not kernels.available(),
    reason="needs an x86-64 CPU with AVX2+FMA and a C++ compiler (g++ or $CXX)")


def _size(size, k, stride, padding):
    """TensorFlow's output size and padding before the first element."""
    if padding == "SAME":
        out = -(-size // stride)
        return out, max((out - 1) * stride + k - size, 0) // 2
    return max((size - k + stride) // stride, 0), 0


def _padded_taps(x, k, stride, padding):
    """A zero-padded float64 copy of x [N, H, W, C], and for each tap (i, j) of a k x k
    kernel the index of the part of it that the tap reads for every output pixel."""
    n, h, w, c = x.shape
    oh, pt = _size(h, k, stride, padding)
    ow, pl = _size(w, k, stride, padding)
    padded = np.zeros((n, h + 2 * k + stride * oh, w + 2 * k + stride * ow, c))
    padded[:, k:k + h, k:k + w] = x
    return padded, [(i, j, (slice(None), slice(k + i - pt, k + i - pt + stride * oh, stride),
                            slice(k + j - pl, k + j - pl + stride * ow, stride)))
                    for i in range(k) for j in range(k)]


def reference_gradients(x, kernel, dy, stride, padding):
    """dL/dx and dL/dkernel of L = sum(dy * depthwise_conv2d(x, kernel)), in float64, tap by
    tap over a zero-padded copy of x: x [N, H, W, C], kernel [k, k, C, 1]."""
    k, (_, h, w, c) = kernel.shape[0], x.shape
    padded, taps = _padded_taps(x, k, stride, padding)
    dpadded = np.zeros_like(padded)
    dkernel = np.zeros((k, k, c, 1))
    for i, j, part in taps:
        dkernel[i, j, :, 0] = (padded[part] * dy).sum(axis=(0, 1, 2))
        dpadded[part] += dy * kernel[i, j, :, 0]
    return dpadded[:, k:k + h, k:k + w], dkernel

SHAPES = [(2, 9, 11, 16), (3, 7, 5, 12), (1, 16, 16, 3), (2, 14, 15, 40), (1, 2, 3, 8),
          (2, 1, 1, 24), (1, 12, 29, 48)]  # channel tails of 4 and 3; rows of 1-29 px


@needs_kernels
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_gradient_ops_equal_the_direct_computation(shape, k):
    rng = np.random.default_rng(sum(shape) * 7 + k)
    library = kernels.library.load()
    for stride in (1, 2, 3):
        for padding in ("SAME", "VALID"):
            x = rng.normal(size=shape).astype(np.float32)
            kernel = rng.normal(size=(k, k, shape[3], 1)).astype(np.float32)
            out = (shape[0], _size(shape[1], k, stride, padding)[0],
                   _size(shape[2], k, stride, padding)[0], shape[3])
            dy = rng.normal(size=out).astype(np.float32)
            dx_ref, dk_ref = reference_gradients(x, kernel, dy, stride, padding)
            dx = library.efficientnet_ipu_depthwise_conv_backprop_input(
                np.array(shape, np.int32), kernel, dy, stride=stride, padding=padding)
            dk = library.efficientnet_ipu_depthwise_conv_backprop_filter(
                x, dy, kernel_size=k, stride=stride, padding=padding)
            case = "k=%d stride=%d %s" % (k, stride, padding)
            assert dx.shape == shape and dk.shape == (k, k, shape[3], 1), case
            np.testing.assert_allclose(dx.numpy(), dx_ref, rtol=0, err_msg=case,
                                       atol=1e-5 * max(np.abs(dx_ref).max(), 1.0))
            np.testing.assert_allclose(dk.numpy(), dk_ref, rtol=0, err_msg=case,
                                       atol=1e-5 * max(np.abs(dk_ref).max(), 1.0))


@needs_kernels
def test_gradient_ops_reject_shapes_they_do_not_compute():
    library = kernels.library.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match="out_backprop must be"):
        library.efficientnet_ipu_depthwise_conv_backprop_filter(
            tf.zeros([1, 8, 8, 16]), tf.zeros([1, 4, 4, 16]), kernel_size=3, stride=1,
            padding="SAME")
    with pytest.raises(tf.errors.InvalidArgumentError, match="kernel size must be 1 to 7"):
        library.efficientnet_ipu_depthwise_conv_backprop_filter(
            tf.zeros([1, 8, 8, 16]), tf.zeros([1, 8, 8, 16]), kernel_size=9, stride=1,
            padding="SAME")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[k, k, C, 1\]"):
        library.efficientnet_ipu_depthwise_conv_backprop_input(
            np.array([1, 8, 8, 16], np.int32), tf.zeros([3, 3, 8, 1]), tf.zeros([1, 8, 8, 16]),
            stride=1, padding="SAME")
    with pytest.raises(ValueError, match="kernels up to 7x7"):
        conv_ops.depthwise_conv2d(tf.zeros([1, 9, 9, 8]), tf.zeros([9, 9, 8, 1]), 1,
                                        "SAME")



def reference_forward(x, kernel, stride, padding):
    """depthwise_conv2d(x, kernel) in float64, tap by tap over a zero-padded copy of x."""
    padded, taps = _padded_taps(x, kernel.shape[0], stride, padding)
    return sum(padded[part] * kernel[i, j, :, 0] for i, j, part in taps)

ROUTED = [(14, 3, 2, 0), (21, 5, 2, 0), (10, 5, 0, 2), (13, 5, 0, 2), (6, 3, 0, 2),
          (64, 3, 1, 1)]  # width, k, and how many of the two passes each code runs


def test_route_takes_the_faster_code_only_where_both_compute_the_pass():
    route = kernels.dispatch.depthwise_route
    assert route(10, 5, 1, "SAME") == (False, True)  # 4 of 10 px are row ends: oneDNN
    assert route(14, 5, 1, "SAME") == (False, True)
    assert route(28, 5, 1, "SAME") == (True, False)  # 4 of 28 px: ours
    assert route(10, 3, 1, "SAME") == (True, False)
    assert route(7, 3, 1, "SAME") == (False, True)
    assert route(56, 3, 1, "SAME") == (True, False)
    assert route(80, 3, 1, "SAME") == (False, False)  # wider than measured to gain
    for args in ((10, 5, 2, "SAME"), (10, 5, 1, "VALID"), (10, 4, 1, "SAME"),
                 (10, 1, 1, "SAME"), (None, 5, 1, "SAME")):
        assert route(*args) == (False, False), args


@needs_kernels
@pytest.mark.parametrize("width,k,ours,onednn", ROUTED)
def test_routed_passes_equal_the_direct_computation(width, k, ours, onednn):
    """depthwise_conv2d where ``route`` moves a pass to the other code: the output and both
    gradients equal the float64 computation, and the graph runs the ops ``route`` chose
    (ours: our input-gradient op; onednn: tf.nn.depthwise_conv2d)."""
    rng = np.random.default_rng(width * 10 + k)
    x = rng.normal(size=(3, width - 1, width, 20)).astype(np.float32)  # 16 + a tail of 4
    kernel = rng.normal(size=(k, k, 20, 1)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)

    @tf.function
    def passes(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = conv_ops.depthwise_conv2d(x, kernel, 1, "SAME")
        return [y] + tape.gradient(y, [x, kernel], output_gradients=dy)
    graph = passes.get_concrete_function(tf.constant(x), tf.constant(kernel)).graph
    types = [op.type for op in graph.get_operations()]
    assert types.count("EfficientnetIpuDepthwiseConvBackpropInput") == ours
    assert types.count("DepthwiseConv2dNative") == onednn
    dx_ref, dk_ref = reference_gradients(x, kernel, dy, 1, "SAME")
    for got, want in zip(passes(x, kernel), (reference_forward(x, kernel, 1, "SAME"),
                                             dx_ref, dk_ref)):
        np.testing.assert_allclose(got.numpy(), want, rtol=0,
                                   atol=1e-5 * max(np.abs(want).max(), 1.0))

@needs_kernels
@pytest.mark.parametrize("k,strides", [(3, 1), (5, 2)])
def test_group_conv2d_g1_avx2_equals_tensorflow_in_a_tf_function(k, strides):
    """The layer path (kernel reshape, custom gradient, graph mode) against TensorFlow's
    depthwise convolution and its gradients, with the input offset and scale of a folded
    proxy norm, which this path applies with TensorFlow ops."""
    rng = np.random.default_rng(11)
    x = tf.constant(rng.normal(size=(4, 14, 14, 40)).astype(np.float32))
    scale = tf.Variable(rng.uniform(0.5, 2.0, size=40).astype(np.float32))
    offset = tf.Variable(rng.normal(size=40).astype(np.float32))
    ours = L.GroupConv2D(40, k, strides=strides, group_size=1, implementation="avx2")
    theirs = L.GroupConv2D(40, k, strides=strides, group_size=1, implementation="tensorflow")
    ours(x)
    theirs(x)
    theirs.set_weights(ours.get_weights())

    @tf.function
    def grads(layer, scale=None, offset=None):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, input_scale=scale, input_offset=offset)
            loss = tf.reduce_sum(tf.sin(y))
        sources = [x, layer.kernel] + ([offset, scale] if offset is not None else [])
        return [y] + tape.gradient(loss, sources)
    graph = grads.get_concrete_function(ours).graph
    assert any(op.type == "EfficientnetIpuDepthwiseConvBackpropFilter"
               for op in graph.get_operations())
    # The scale's gradient sums terms up to ~500 into values near 0.3: float32 round-off
    # there reaches 1.4e-4 (seen once in 100 runs on a loaded machine), so the absolute
    # tolerance follows each output's largest magnitude.
    for args in ((), (scale, offset)):
        for a, b in zip(grads(ours, *args), grads(theirs, *args)):
            b = b.numpy()
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-4,
                                       atol=max(1e-4, 2e-6 * float(np.abs(b).max())))


def test_auto_chooses_the_kernels_for_float32_depthwise_up_to_7x7():
    cpu_only = all(d.device_type == "CPU" for d in tf.config.list_physical_devices())
    def choose(groups, group_size, filters_per_group, dtype, kernel_size):
        return kernels.dispatch.group_conv_variant(groups, group_size, filters_per_group,
                                                   dtype, kernel_size, "auto")
    if cpu_only and kernels.available():
        assert choose(96, 1, 1, "float32", kernel_size=5) == "ours"
        layer = L.GroupConv2D(24, 3, group_size=1)
        layer(tf.zeros([1, 6, 6, 24]))
        assert layer.depthwise and layer.kernel_variant == "ours"
    assert choose(96, 1, 1, "float32", kernel_size=9) != "ours"  # larger than the blocks
    assert choose(96, 1, 1, "float16", kernel_size=3) != "ours"  # mixed precision
    assert choose(48, 1, 2, "float32", kernel_size=3) != "ours"  # channel multiplier 2
    with pytest.raises(ValueError, match="kernel_size <= 7"):
        L.GroupConv2D(24, 9, group_size=1, implementation="avx2")(tf.zeros([1, 9, 9, 24]))


@needs_kernels
@pytest.mark.skipif("avx512f" not in kernels.library.cpu_flags(),
                    reason="this CPU has no AVX-512F: the AVX2 loops are the ones the other "
                           "tests ran")
def test_avx2_loops_also_equal_the_direct_computation_on_an_avx512_cpu():
    """On an AVX-512 CPU the tests above ran the AVX-512 loops; the AVX2 ones (what AVX2-only
    CPUs run, selected by $EFFICIENTNET_IPU_AVX2_ONLY) must give the same results."""
    env = dict(os.environ, EFFICIENTNET_IPU_AVX2_ONLY="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "equal_the_direct_computation and not avx2_loops or equals_tensorflow"],
        env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "%d passed" % (len(SHAPES) * 5 + len(ROUTED) + 2) in done.stdout


@needs_kernels
def test_b0_g1_training_gradients_equal_with_tensorflows_depthwise_gradients():
    """The whole B0-G1-BN model: every trainable variable's gradient with our depthwise
    gradient ops ("auto") equals the one with TensorFlow's ("tensorflow"), same weights."""
    from efficientnet_ipu import models
    cpu_only = all(d.device_type == "CPU" for d in tf.config.list_physical_devices())
    if not cpu_only:
        pytest.skip("'auto' picks the CPU kernels only on a CPU-only machine")
    no_dropout = dict(dropout_rate=0.0, drop_connect_rate=0.0)  # the same function twice
    tf.keras.utils.set_random_seed(5)  # the same weights on every run
    ours = models.EfficientNet("b0", group_size=1, norm="bn", num_classes=10, **no_dropout)
    theirs = models.EfficientNet("b0", group_size=1, norm="bn", num_classes=10,
                                 conv_implementation="tensorflow", **no_dropout)
    theirs.set_weights(ours.get_weights())
    assert {layer.kernel_variant for layer in models.iter_layers(ours)
            if isinstance(layer, L.GroupConv2D)} == {"ours"}
    rng = np.random.default_rng(5)
    images = tf.constant(rng.uniform(0, 255, (4, 48, 48, 3)).astype(np.float32))
    labels = tf.constant([1, 3, 5, 7])

    @tf.function
    def gradients(model):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        return tape.gradient(loss, model.trainable_variables)
    graph = gradients.get_concrete_function(ours).graph
    assert any(op.type == "EfficientnetIpuDepthwiseConvBackpropInput"
               for op in graph.get_operations())
    expected = [g.numpy() for g in gradients(theirs)]
    # Round-off is relative to the largest gradient. Through 16 BN blocks in float32 the two
    # summation orders differ by up to about 2e-5 of it in the stem (seen on unseeded
    # weights), so the bound is 5e-5 of it; a wrong gradient is off by far more.
    scale = max(float(np.abs(g).max()) for g in expected)
    for a, b, v in zip(gradients(ours), expected, ours.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-3, atol=5e-5 * scale, err_msg=v.path)
