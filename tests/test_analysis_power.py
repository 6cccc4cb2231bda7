"""Paper 002's power decomposition (analysis/power.py): the terms against a direct numpy
computation, the decomposition at every NormActivation of a model, and the random nets of
Definition 1 reproducing Figure 2's findings by numbers, on real CIFAR-10 images."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_ipu import models
from efficientnet_ipu.analysis import power
from conftest import load_jpegs, shared_path


def direct_terms(y):
    """Eq. 5's four terms of y [N, H, W, C] by explicit loops over inputs and channels."""
    n, h, w, c = y.shape
    out = {t: np.zeros(c) for t in power.TERMS}
    out["power"] = np.zeros(c)
    for ch in range(c):
        means = np.array([y[i, :, :, ch].mean() for i in range(n)])
        stds = np.array([np.sqrt(((y[i, :, :, ch] - means[i]) ** 2).mean()) for i in range(n)])
        out["channel_mean_sq"][ch] = means.mean() ** 2
        out["instance_mean_var"][ch] = ((means - means.mean()) ** 2).mean()
        out["instance_std_sq"][ch] = stds.mean() ** 2
        out["instance_std_var"][ch] = ((stds - stds.mean()) ** 2).mean()
        out["power"][ch] = (y[:, :, :, ch].astype(np.float64) ** 2).mean()
    return out


def test_terms_match_numpy_and_sum_to_the_power():
    rng = np.random.default_rng(0)
    # Channels with different means, spreads and input-dependence.
    y = (rng.normal(size=(6, 5, 4, 3)) * rng.uniform(0.5, 2.0, (6, 1, 1, 3))
         + rng.normal(size=(6, 1, 1, 3)) + np.array([0.0, 1.5, -3.0]))
    terms = power.decompose(*power.instance_statistics(y))
    expected = direct_terms(y)
    for name in power.TERMS + ("power",):
        np.testing.assert_allclose(terms[name], expected[name], rtol=1e-10, err_msg=name)
    np.testing.assert_allclose(sum(terms[t] for t in power.TERMS), expected["power"],
                               rtol=1e-10)
    fractions = power.layer_fractions(terms)
    assert abs(sum(fractions.values()) - 1.0) < 1e-12
    assert all(fractions[t] > 0.01 for t in power.TERMS)


@pytest.mark.parametrize("norm", ["bn", "gn", "ln_pn"])
def test_model_decomposition_matches_numpy_on_each_normalized_step(norm):
    """``power_decomposition`` on a small EfficientNet: one row per NormActivation, in call
    order, and the stem's terms equal the direct computation on the stem's normalized
    output (its conv output normalized by hand)."""
    model = models.EfficientNet("b0", group_size=16, norm=norm, input_shape=(32, 32, 3),
                                num_classes=10)
    rng = np.random.default_rng(1)
    for weight in model.weights:
        name = weight.name.split("/")[-1]
        if name.startswith(("moving_mean", "moving_variance")):
            value = weight.numpy()
            weight.assign(np.abs(value + rng.uniform(-0.3, 0.3, value.shape)) + 0.1)
    images = rng.uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    rows = power.power_decomposition(model, images, batch_size=2)
    names = [r["layer"] for r in rows]
    assert names[0] == "stem_norm_act" and names[-1] == "top_norm_act"
    assert "block2a_expand_norm_act" in names and "block7a_norm_act" in names
    assert len(names) == 2 + 16 + 15   # stem, each block's group conv, 15 expands, top
    stem_conv = model.get_layer("stem_conv")
    x = stem_conv(model.get_layer("standardize")(images)).numpy().astype(np.float64)
    if norm == "bn":
        bn = model.get_layer("stem_norm_act").norm_layer
        y = (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    else:  # 4 contiguous groups (gn) or 1 (ln) per input
        groups = 4 if norm == "gn" else 1
        g = x.reshape(x.shape[:3] + (groups, -1))
        mean = g.mean(axis=(1, 2, 4), keepdims=True)
        var = g.var(axis=(1, 2, 4), keepdims=True)
        y = ((g - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)
    expected = direct_terms(y)
    for name in power.TERMS:
        np.testing.assert_allclose(rows[0]["terms"][name], expected[name], rtol=2e-3,
                                   atol=1e-6, err_msg=name)


def test_needs_two_images():
    model = models.EfficientNet("b0", input_shape=(32, 32, 3), num_classes=10)
    with pytest.raises(ValueError, match="at least 2 images"):
        power.power_decomposition(model, np.zeros((1, 32, 32, 3), np.float32))


@pytest.fixture(scope="module")
def cifar_images():
    """64 real CIFAR-10 test JPEGs (every class), standardized per colour channel."""
    folder = shared_path("cifar10_jpg", "test")
    paths = sorted(glob.glob(os.path.join(folder, "*", "*.jpg")))[::50][:64]
    images = load_jpegs(paths, 32)
    return (images - images.mean((0, 1, 2))) / images.std((0, 1, 2))


def collapse_and_variability(rows):
    """Per layer: the fraction at the dataset scale (channel-wise collapse), and the share
    of the rest that varies between inputs (instance variability)."""
    f = [r["fractions"] for r in rows]
    collapse = np.array([x["channel_mean_sq"] for x in f])
    variability = np.array([(x["instance_mean_var"] + x["instance_std_var"])
                            / max(1.0 - x["channel_mean_sq"], 1e-12) for x in f])
    return collapse, variability


def test_random_nets_reproduce_figure_2_findings(cifar_images):
    """Paper 002 sec. 4 and Figure 2 (top row), on random nets of depth 30 and width 64:
    LN's channel-wise collapse grows with depth and stays within Theorem 1's bound; IN has
    no instance variability; GN lies between the two on both; LN+PN stays close to BN
    (no collapse)."""
    nets = {norm: collapse_and_variability(power.random_net(
        cifar_images, norm, depth=30, width=64, groups=4, seed=0))
        for norm in power.RANDOM_NET_NORMS}
    ln_collapse, ln_var = nets["ln"]
    assert ln_collapse[0] < 0.05 < ln_collapse[4] < ln_collapse[14] < ln_collapse[29]
    assert ln_collapse[29] > 0.9
    rest = 1.0 - ln_collapse
    bound = np.array([power.theorem1_bound(d) for d in range(1, 31)]) * rest[0]
    assert np.all(rest <= bound + 1e-3)
    in_collapse, in_var = nets["in"]
    assert np.all(in_var < 1e-4) and np.all(in_collapse < 1e-6)
    gn_collapse, gn_var = nets["gn"]
    assert in_collapse.mean() < gn_collapse.mean() < ln_collapse.mean()
    assert in_var.mean() < gn_var.mean() < ln_var.mean()
    bn_collapse, _ = nets["bn"]
    pn_collapse, pn_var = nets["ln_pn"]
    assert np.all(bn_collapse < 1e-6)
    assert pn_collapse.mean() < 0.05 and pn_collapse[29] < 0.05
    assert pn_var.mean() > 0.02   # unlike IN, its inputs stay distinguishable


def test_random_net_validates_its_arguments(cifar_images):
    with pytest.raises(ValueError, match="norm must be one of"):
        power.random_net(cifar_images[:2], "frn")
    with pytest.raises(ValueError, match="depth"):
        power.random_net(cifar_images[:2], "ln", depth=0)
    with pytest.raises(ValueError, match="groups=5 must divide width=64"):
        power.random_net(cifar_images[:2], "gn", width=64, groups=5)
