"""Paper 001's recipe as Graphcore's code ran it: the lr schedule, CutMix version 1,
per-example Mixup, the weight-decay filter, B2's half resolution, the training crops and
GroupNorm's strided channel grouping, each against a direct computation."""
import collections
import math

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_ipu import config as config_lib
from efficientnet_ipu import data, models, resolution, train
from efficientnet_ipu import layers as L


@pytest.mark.parametrize("decay_from", ["step0", "warmup_end"])
def test_schedule_at_chosen_steps(decay_from):
    peak, warmup, decay, every = 0.048, 50.0, 0.97, 24.0
    schedule = train.WarmupStaircaseDecay(peak, warmup, decay, every, decay_from)
    offset = 0.0 if decay_from == "step0" else warmup
    for step in (0, 1, 49, 50, 71, 72, 95, 96, 1000, 33599):
        if step < warmup:
            expected = peak * (step + 1) / warmup
        else:
            expected = peak * decay ** math.floor((step - offset) / every)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step
    # Counted from step 0, the lr after the warm-up is decay^(warmup / every) of the other.
    ratio = (float(train.WarmupStaircaseDecay(peak, warmup, decay, every, "warmup_end")(1000))
             / float(train.WarmupStaircaseDecay(peak, warmup, decay, every)(1000)))
    assert ratio == pytest.approx(decay ** -(math.floor(1000 / every)
                                             - math.floor(950 / every)), rel=1e-5)
    with pytest.raises(ValueError, match="decay_from must be one of"):
        train.WarmupStaircaseDecay(peak, warmup, decay, every, "end")


def test_cutmix_version_1_draws():
    lam = 0.9
    # The rule at chosen draws: no cut below 1.55 lambda - 0.96 = 0.435, else 1 + ln(v) / 4.
    for u0, u1 in ((0.1, 0.5), (0.434, 0.01), (0.436, 0.5), (0.9, 1e-3), (0.99, 0.999)):
        kept = float(data.cutmix_kept_area(lam, u=tf.constant([u0, u1])))
        expected = 1.0 if u0 < 0.435 else max(1.0 + math.log(u1) / 4.0, 0.0)
        assert kept == pytest.approx(expected, abs=1e-6), (u0, u1)
    assert float(data.cutmix_kept_area(lam, "fixed")) == pytest.approx(lam)
    # Over many draws: no cut in 43.5 % of batches; else the kept share is 1 + ln(v) / 4,
    # so P(kept < 0.5) = P(v < e^-2) = 13.5 % of the cut batches.
    tf.random.set_seed(3)
    draws = np.array([float(data.cutmix_kept_area(lam)) for _ in range(3000)])
    no_cut = np.mean(draws == 1.0)
    assert abs(no_cut - 0.435) < 0.03, no_cut
    cut = draws[draws < 1.0]
    assert abs(np.mean(cut < 0.5) - math.exp(-2)) < 0.03
    assert abs(np.mean(cut) - 0.75) < 0.02   # E[1 + ln(v) / 4] = 3/4 (the clip is rare)


def test_mixup_draws_one_coefficient_per_example():
    n, classes = 64, 5
    values = np.arange(n, dtype=np.float32) * 10.0 + 1.0
    images = tf.constant(np.tile(values[:, None, None, None], (1, 2, 2, 3)))
    labels = tf.constant(np.arange(n) % classes)
    mixed, soft = data.mix_batch(images, labels, classes, mixup_alpha=0.2, cutmix_lambda=0.0,
                                 seed=[4, 0])
    mixed, soft = mixed.numpy()[:, 0, 0, 0], soft.numpy()
    partner = np.roll(values, 1)
    m = (mixed - partner) / (values - partner)           # image_i = m x_i + (1 - m) x_{i-1}
    assert np.all(m >= 0.5 - 1e-5) and np.all(m <= 1 + 1e-5)
    assert np.std(m) > 0.02                               # not one coefficient for the batch
    one_hot = np.eye(classes)[np.arange(n) % classes]
    np.testing.assert_allclose(soft, m[:, None] * one_hot
                               + (1 - m[:, None]) * np.roll(one_hot, 1, axis=0), atol=1e-5)


def _last_name(variable):
    name = getattr(variable, "path", None) or variable.name
    return name.split("/")[-1].split(":")[0]


def test_weight_decay_filters_list_exactly_these_variables():
    """B0-G16-LN+PN: 16 blocks (15 with an expand conv), 33 proxy-normalized
    activations (stem, 15 expand, 16 group conv, top)."""
    model = models.EfficientNet("b0", group_size=16, norm="ln_pn", num_classes=10)
    trainable = collections.Counter(_last_name(v) for v in model.trainable_variables)
    graphcore = collections.Counter(_last_name(v) for v in train.decayed_variables(model))
    text = collections.Counter(_last_name(v)
                               for v in train.decayed_variables(model, "paper_text"))
    # Every conv kernel (stem 1, expand 15, group 16, project 16, top 1) and the
    # classifier's kernel: 50 "kernel"; the classifier's bias; 16 of each SE weight; PN's
    # 33 proxy_beta and proxy_gamma.
    assert graphcore == {"kernel": 50, "bias": 1, "reduce_kernel": 16, "reduce_bias": 16,
                         "expand_kernel": 16, "expand_bias": 16, "proxy_beta": 33,
                         "proxy_gamma": 33}
    assert text == {"kernel": 49, "reduce_kernel": 16, "expand_kernel": 16,
                    "proxy_beta": 33, "proxy_gamma": 33}
    # Left out: PN's own beta and gamma (33 each) and the project norms' gamma (16).
    assert trainable - graphcore == {"gamma": 33 + 16, "beta": 33}
    with pytest.raises(ValueError, match="rule must be one of"):
        train.decayed_variables(model, "all")


def test_half_resolutions_keep_the_mod_32_rule():
    for size, half in models.HALF_RESOLUTION.items():
        native = models.SIZES[size][2]
        assert half % 32 == native % 32, size
        assert 0.4 < (half / native) ** 2 < 0.6, size   # about half the pixels
    assert models.HALF_RESOLUTION["b2"] == 196


def test_training_crops_use_graphcores_box_sampling():
    config = config_lib.base_config()
    assert (config.augment.min_object_covered, config.augment.crop_attempts) == (0.1, 100)
    image = tf.zeros([40, 60, 3], tf.uint8)
    graph = tf.function(lambda x: data.train_preprocess(x, 32, config.augment, [0, 0])
                        ).get_concrete_function(image).graph
    boxes = [op for op in graph.get_operations()
             if op.type == "StatelessSampleDistortedBoundingBox"]
    assert boxes and all(op.get_attr("max_attempts") == 100 for op in boxes)
    covered = [float(tf.get_static_value(op.inputs[2])) for op in boxes]
    assert covered == pytest.approx([0.1] * len(boxes))
    bad = config_lib.base_config()
    bad.augment.crop_attempts = 0
    with pytest.raises(ValueError, match="augment.crop_attempts"):
        config_lib.validate(bad)


@pytest.mark.parametrize("kernels", ["auto", "tensorflow"])
def test_group_norm_strided_grouping_equals_direct_computation(kernels):
    rng = np.random.default_rng(11)
    x = rng.normal(1.0, 2.0, size=(3, 4, 5, 12)).astype(np.float32)
    groups, eps = 4, 1e-3
    layer = L.GroupNormalization(groups, epsilon=eps, grouping="strided", kernels=kernels)
    layer.build(x.shape)
    gamma = rng.normal(1.0, 0.3, 12).astype(np.float32)
    beta = rng.normal(0.0, 0.3, 12).astype(np.float32)
    layer.set_weights([gamma, beta])
    y = layer(tf.constant(x)).numpy()
    expected = np.empty_like(x, dtype=np.float64)
    for g in range(groups):
        channels = np.arange(g, 12, groups)                  # channel c in group c mod G
        part = x[..., channels].astype(np.float64)
        mean = part.mean(axis=(1, 2, 3), keepdims=True)
        var = part.var(axis=(1, 2, 3), keepdims=True)
        expected[..., channels] = (part - mean) / np.sqrt(var + eps)
    expected = expected * gamma + beta
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    contiguous = L.GroupNormalization(groups, epsilon=eps, kernels=kernels)
    contiguous.build(x.shape)
    contiguous.set_weights([gamma, beta])
    assert not np.allclose(contiguous(tf.constant(x)).numpy(), y, atol=1e-3)
    with pytest.raises(ValueError, match="grouping must be one of"):
        L.GroupNormalization(groups, grouping="interleaved")


def test_static_loss_scale_keeps_float16_gradients_from_underflowing():
    """A float16 backward pass whose gradients (1e-8) are below half float16's smallest
    subnormal (6e-8): they vanish without the scale, and with the paper's static scale of
    128 they come back, to float16's resolution there, once the scale is removed."""
    config = config_lib.base_config()
    assert train.static_loss_scale(config.train) is None          # fp32
    config.train.precision = "fp16"
    assert train.static_loss_scale(config.train) == 128.0
    config.train.loss_scale = "dynamic"
    assert train.static_loss_scale(config.train) is None          # Keras' optimizer scales
    config.train.loss_scale = "-3"
    with pytest.raises(ValueError, match="train.loss_scale"):
        config_lib.validate(config)
    w = tf.Variable([1.0, 2.0, 3.0])
    x = tf.constant([1e-4, 1e-4, 1e-4], tf.float16)

    def grads(scale):
        with tf.GradientTape() as tape:
            y = x * tf.cast(w, tf.float16)                        # float16 compute
            loss = tf.reduce_sum(y * tf.constant(1e-4, tf.float16))
            scaled = train.apply_loss_scale(tf.cast(loss, tf.float32), scale)
        return train.remove_loss_scale(tape.gradient(scaled, [w]), scale)[0].numpy()
    assert np.all(grads(None) == 0.0)                   # 1e-8 underflows in float16
    np.testing.assert_allclose(grads(128.0), np.full(3, 1e-8), rtol=0.05)


def test_paper_configs_hold_the_papers_and_graphcores_values():
    import importlib.util
    import os
    from conftest import REPO
    spec = importlib.util.spec_from_file_location(
        "paper", os.path.join(REPO, "experiments", "paper.py"))
    paper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper)
    mixup = {"b0": 0.1, "b1": 0.1, "b2": 0.1, "b3": 0.2, "b4": 0.2, "b5": 0.2}
    cutmix = {"b0": 0.0, "b1": 0.95, "b2": 0.9, "b3": 0.9, "b4": 0.85, "b5": 0.8}
    for size in mixup:
        for arg in ("%s,g16,ln_pn,half" % size, "%s,g1,gn,native" % size):
            c = paper.get_config(arg)
            t, a = c.train, c.augment
            batch = t.micro_batch_size * t.gradient_accumulation
            assert batch == 768 and t.epochs == 350, arg
            assert t.base_learning_rate * batch == pytest.approx(2.0 ** -14 * 768)
            assert 1 - t.rmsprop_decay_per_example * batch == pytest.approx(1 - 768 / 2 ** 14)
            assert (t.momentum, t.rmsprop_epsilon, t.weight_decay) == (0.9, 1e-3, 1e-5)
            assert (t.warmup_epochs, t.lr_decay, t.lr_decay_epochs) == (5.0, 0.97, 2.4)
            assert t.label_smoothing == 0.1 and t.lr_decay_from == "step0"
            assert (t.precision, train.static_loss_scale(t)) == ("fp16", 128.0)
            assert (a.mixup_alpha, a.cutmix_lambda) == (mixup[size], cutmix[size])
            assert a.cutmix_sampling == "graphcore_v1"
            assert (a.min_object_covered, a.crop_attempts) == (0.1, 100)
            assert t.weight_decay_filter == "graphcore"
            assert (c.average.enabled, c.average.decay, c.average.keep_epoch_weights) == (
                True, 0.97, True)
            assert c.model.norm_groups == 4
            assert c.image_size.eval == models.SIZES[size][2]
            # Fine-tuning as sec. 3.4 and Graphcore's run: at the native size, 2 epochs,
            # global batch 512, SGD from 0.25 on a cosine, then the sweep.
            f = c.finetune
            assert f.enabled and config_lib.finetune_size(c) == models.SIZES[size][2]
            assert (f.epochs, f.micro_batch_size * f.gradient_accumulation) == (2, 512)
            assert f.base_learning_rate * 512 == 0.25 and f.momentum == 0.0
            assert f.weight_decay == 0.0 and f.blocks in (1, 2, 3)
            sizes = config_lib.parse_sizes(c.sweep.image_sizes)
            assert c.image_size.train in sizes and c.image_size.eval in sizes
            assert all(resolution.same_residue(c.image_size.train, s) for s in sizes)
    assert L.blocks.EPSILON == 1e-3                                # norm epsilon
    assert L.ProxyNormActivation().proxy_epsilon == 0.03


@pytest.mark.parametrize("group_size", [1, 16])
def test_fp16_training_step_runs_on_cpu(group_size):
    """The paper configs train in float16. TensorFlow has no float16 gradient of a grouped
    convolution on CPU, so there G16 runs one convolution per group; a B0 training step in
    mixed float16 runs and gives finite float32 gradients for G1 and G16."""
    from tensorflow import keras
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.EfficientNet("b0", group_size=group_size, norm="ln_pn", num_classes=4,
                                    input_shape=(32, 32, 3))
        x = tf.random.uniform([2, 32, 32, 3], 0, 255)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(model(x, training=True), tf.float32) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert all(g is not None and g.dtype == tf.float32 for g in grads)
    assert all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads)
    if group_size == 16 and all(d.device_type == "CPU"
                                for d in tf.config.list_physical_devices()):
        variants = {layer.kernel_variant for layer in models.iter_layers(model)
                    if isinstance(layer, L.GroupConv2D)}
        assert variants == {"split"}


def test_both_group_rules_give_the_layer_shapes_of_b3_g16():
    shapes = {}
    for rule in L.GROUP_RULES:
        model = models.EfficientNet("b3", group_size=16, norm="gn", num_classes=10,
                                    group_rule=rule)
        shapes[rule] = {layer.name: [tuple(k.shape) for k in layer.kernel_variables()]
                        for layer in models.iter_layers(model)
                        if isinstance(layer, L.GroupConv2D)}
    nearest, graphcore = shapes["nearest_divisor"], shapes["graphcore"]
    # block1b has 24 channels: the nearest divisor of 24 to 16 is 12 (two groups),
    # Graphcore's max(24 // 16, 1) = 1 group of 24 (a dense 3x3 convolution).
    assert nearest["block1b_gconv"] == [(3, 3, 12, 24)]
    assert graphcore["block1b_gconv"] == [(3, 3, 24, 24)]
    # Everywhere else in B3-G16 the rules agree (e.g. block1a's 40 channels: 2 groups of
    # 20 by both), and no group is unequal.
    differ = sorted(name for name in nearest if nearest[name] != graphcore[name])
    assert differ == ["block1b_gconv"]
    assert nearest["block1a_gconv"] == graphcore["block1a_gconv"] == [(3, 3, 20, 40)]
    for name in nearest:
        assert len(nearest[name]) == len(graphcore[name]) == 1, name


def test_unequal_groups_equal_a_direct_computation():
    # C = 240, G = 32: Graphcore's rule gives 7 groups, 35, 35, 34, 34, 34, 34, 34.
    assert L.group_channels(240, 32, "graphcore") == [35, 35] + [34] * 5
    assert L.group_channels(240, 32, "nearest_divisor") == [30] * 8
    layer = L.GroupConv2D(240, 3, strides=2, group_size=32, group_rule="graphcore")
    x = tf.random.stateless_normal([2, 9, 9, 240], seed=[1, 2])
    scale = tf.random.stateless_uniform([240], seed=[3, 4], minval=0.5, maxval=2.0)
    offset = tf.random.stateless_normal([240], seed=[5, 6])
    y = layer(x, input_scale=scale, input_offset=offset)
    assert [tuple(k.shape) for k in layer.kernel_variables()] == (
        [(3, 3, 35, 35)] * 2 + [(3, 3, 34, 34)] * 5)
    # Direct: each group's channels of (x + offset) * scale through a dense conv, in float64
    # with explicit zero padding ("same", stride 2 on 9 px: pad 1 each side).
    xs = np.pad((x.numpy() + offset.numpy()) * scale.numpy(),
                [(0, 0), (1, 1), (1, 1), (0, 0)]).astype(np.float64)
    outputs, start = [], 0
    for kernel in layer.kernel_variables():
        k = kernel.numpy().astype(np.float64)
        c = k.shape[2]
        out = np.zeros((2, 5, 5, k.shape[3]))
        for i in range(5):
            for j in range(5):
                patch = xs[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, start:start + c]
                out[:, i, j] = np.einsum("nhwc,hwco->no", patch, k)
        outputs.append(out)
        start += c
    np.testing.assert_allclose(y.numpy(), np.concatenate(outputs, -1), rtol=1e-4, atol=1e-4)
    # In a model, every per-group kernel is a weight-decayed variable.
    model = models.EfficientNet("b0", group_size=32, norm="ln_pn", num_classes=10,
                                group_rule="graphcore")
    decayed = {id(v) for v in train.decayed_variables(model)}
    group_kernels = [k for layer in models.iter_layers(model)
                     if isinstance(layer, L.GroupConv2D) for k in layer.kernel_variables()]
    assert len(group_kernels) > 16 and all(id(k) in decayed for k in group_kernels)
    with pytest.raises(ValueError, match="group_rule must be one of"):
        L.GroupConv2D(240, 3, group_rule="floor")
    config = config_lib.base_config()
    config.model.group_rule = "floor"
    with pytest.raises(ValueError, match="config.model.group_rule must be one of"):
        config_lib.validate(config)
