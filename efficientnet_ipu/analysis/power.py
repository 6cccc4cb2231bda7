"""Paper 002's power decomposition of normalized pre-activations (sec. 3, eq. 5), its random
nets (Definition 1, Appendix A.1 "Random nets") and its power plots (Figure 2, Appendix
A.2).

For y the output of a normalization step (before the affine transform and the activation),
x an input image, alpha a spatial position and c a channel, the power of y in channel c
splits into four terms (paper 002 eq. 5):

    P_c[y] = mu_c[y]^2 + sigma_c[mu_{x,c}[y]]^2 + mu_c[sigma_{x,c}[y]]^2 + sigma_c[sigma_{x,c}[y]]^2

with mu_{x,c}[y], sigma_{x,c}[y] the mean and standard deviation over alpha for one input
(the instance statistics), and mu_c, sigma_c the mean and standard deviation over inputs x.
The terms, by the names this module gives them (``TERMS``):

- ``channel_mean_sq`` = mu_c[y]^2: the power at the dataset scale; all of P_c[y] there
  means y is constant in channel c ("channel-wise collapse", LN's failure mode, sec. 4,
  Theorem 1);
- ``instance_mean_var`` = sigma_c[mu_{x,c}[y]]^2: the inter-x variability of the instance
  means (the instance scale);
- ``instance_std_sq`` = mu_c[sigma_{x,c}[y]]^2: the inter-x similarity of the instance
  standard deviations;
- ``instance_std_var`` = sigma_c[sigma_{x,c}[y]]^2: their inter-x variability.

The last two sum to the power at the pixel scale. IN fixes mu_{x,c} = 0 and
sigma_{x,c} = 1 for every input, so its two variability terms vanish ("lack of variability
in instance statistics", IN's failure mode, Theorem 2). At the layer level (the paper's
equation after eq. 5) each term is averaged over channels and divided by the average power,
so that the four fractions sum to one (``layer_fractions``).

Everything is computed from the instance statistics (mu_{x,c}, sigma_{x,c}) of each
normalized step, float64 [N, C]: 256 images of a B0 at 224 px need a few MB.
"""
import numpy as np
import tensorflow as tf

from efficientnet_ipu import kernels
from efficientnet_ipu.layers import blocks, norm as norm_lib, proxy_norm

TERMS = ("channel_mean_sq", "instance_mean_var", "instance_std_sq", "instance_std_var")
RANDOM_NET_NORMS = ("bn", "ln", "in", "gn", "ln_pn")


def instance_statistics(y):
    """Per-input, per-channel spatial mean and standard deviation of y [N, H, W, C]:
    (mu_{x,c}[y], sigma_{x,c}[y]), float64 [N, C] each (population std)."""
    y = tf.cast(y, tf.float64)
    mean = tf.reduce_mean(y, axis=[1, 2])
    variance = tf.reduce_mean(tf.square(y - mean[:, None, None, :]), axis=[1, 2])
    return mean.numpy(), np.sqrt(np.maximum(variance.numpy(), 0.0))


def decompose(instance_mean, instance_std):
    """Paper 002 eq. 5 per channel from the instance statistics.

    Args:
      instance_mean, instance_std: mu_{x,c}[y] and sigma_{x,c}[y], float [N, C] (N inputs
        x, each over the same number of spatial positions).

    Returns: dict of float64 [C] arrays: the four ``TERMS`` and ``power`` = P_c[y] (their
      sum, the mean of y^2 over inputs and positions).
    """
    m = np.asarray(instance_mean, np.float64)
    s = np.asarray(instance_std, np.float64)
    terms = dict(channel_mean_sq=m.mean(0) ** 2, instance_mean_var=m.var(0),
                 instance_std_sq=s.mean(0) ** 2, instance_std_var=s.var(0))
    terms["power"] = sum(terms[t] for t in TERMS)
    return terms


def layer_fractions(terms):
    """The layer-level decomposition: each term averaged over channels, divided by the
    channel-averaged power (floats that sum to 1)."""
    power = float(np.mean(terms["power"]))
    return {t: float(np.mean(terms[t])) / power for t in TERMS}


def normalized(layer, inputs):
    """The output of ``layer``'s normalization step on ``inputs`` [N, H, W, C] (a
    ``NormActivation``), before any affine transform: GN/LN/IN with the input's own
    group statistics, BN with its moving statistics (inference). float32 [N, H, W, C]."""
    x = tf.cast(inputs, tf.float32)
    norm = layer.norm_layer
    if isinstance(norm, norm_lib.BatchNormalization):
        return (x - tf.cast(norm.moving_mean, tf.float32)) * tf.math.rsqrt(
            tf.cast(norm.moving_variance, tf.float32) + norm.epsilon)
    channels = x.shape[-1]
    scale, shift = norm.scale_shift(x, affine=(tf.ones([channels]), tf.zeros([channels])))
    return x * scale[:, None, None, :] + shift[:, None, None, :]


def power_decomposition(model, images, batch_size=32):
    """Paper 002's power decomposition at every normalization-then-activation step of a
    model of this project (every ``NormActivation``, in call order).

    Args:
      model: a Keras model of this project (``models.EfficientNet``), images float
        [N, S, S, 3] in [0, 255] -> logits.
      images: float [N, S, S, 3] (e.g. ``data.eval_preprocess``'d), N >= 2.
      batch_size: images per forward pass (the statistics are per image, so this only
        bounds the memory).

    Returns: list of dicts, one per step: ``layer`` (name), ``norm`` (e.g. "ln_pn"),
      ``channels``, ``terms`` (``decompose``'s per-channel arrays) and ``fractions``
      (``layer_fractions``).

    Raises: ValueError if fewer than 2 images are given.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape[0] is None or images.shape[0] < 2:
        raise ValueError("power_decomposition needs at least 2 images, got shape %s"
                         % (images.shape,))
    order, stats = [], {}

    def record(layer, inputs):
        mean, std = instance_statistics(normalized(layer, inputs))
        if layer.name not in stats:
            order.append(layer)
            stats[layer.name] = ([], [])
        stats[layer.name][0].append(mean)
        stats[layer.name][1].append(std)

    # The plain composition, so that every step runs NormActivation.call.
    with blocks.observe_norm_inputs(record), kernels.settings.override(fold=False):
        for start in range(0, images.shape[0], batch_size):
            model(images[start:start + batch_size], training=False)
    rows = []
    for layer in order:
        means, stds = stats[layer.name]
        terms = decompose(np.concatenate(means), np.concatenate(stds))
        rows.append(dict(layer=layer.name, norm=layer.norm, channels=len(terms["power"]),
                         terms=terms, fractions=layer_fractions(terms)))
    return rows


# ---------------------------------------------------------------------------------------
# Random nets (paper 002 Definition 1 and Appendix A.1).

def periodic_conv(x, kernel, stride=1):
    """A k x k convolution of x [N, H, W, C] with periodic boundary conditions (the
    assumption of Theorem 1): the input wrapped around by k // 2 on each side, then a
    VALID convolution. ``kernel`` [k, k, C, C_out]."""
    p = kernel.shape[0] // 2
    if p:
        x = tf.concat([x[:, -p:], x, x[:, :p]], axis=1)
        x = tf.concat([x[:, :, -p:], x, x[:, :, :p]], axis=2)
    return tf.nn.conv2d(x, kernel, stride, "VALID")


def normalize(x, norm, groups, epsilon):
    """The normalization step of a random net on x [N, H, W, C] (paper 002 eq. 3): BN over
    (N, H, W) per channel (the batch's statistics), LN over (H, W, C) per input, IN over
    (H, W) per input and channel, GN over (H, W, C / groups) per input and group."""
    if norm == "bn":
        axes, shape = [0, 1, 2], x.shape
    elif norm == "ln":
        axes, shape = [1, 2, 3], x.shape
    elif norm == "in":
        axes, shape = [1, 2], x.shape
    else:
        n, h, w, c = x.shape
        x = tf.reshape(x, [n, h, w, groups, c // groups])
        axes, shape = [1, 2, 4], (n, h, w, c)
    mean, variance = tf.nn.moments(x, axes=axes, keepdims=True)
    return tf.reshape((x - mean) * tf.math.rsqrt(variance + epsilon), shape)


def random_net(images, norm, depth=50, width=128, kernel_size=3, groups=8,
               gamma_std=0.2, beta_std=0.2, activation="relu", epsilon=1e-3, seed=0):
    """Propagate ``images`` through a random net of paper 002 Definition 1 and return the
    power decomposition of every layer's normalized pre-activation.

    Each layer l = 1..depth: a k x k convolution with periodic boundary conditions
    (stride 2 at layer 1, as Appendix A.1 downsamples to save memory) and weights drawn
    i.i.d. from a truncated normal with 1 / sqrt(fan-in) scaling; the normalization step
    (``normalize``); the affine transform gamma * y + beta with gamma ~ N(1, gamma_std^2),
    beta ~ N(0, beta_std^2) per channel; the activation; for "ln_pn" the proxy
    normalization of eq. 7 instead of the plain activation (proxy parameters 0).

    Appendix A.1's exact width, depth and parameter spreads are not legible in our copy of
    the paper; the defaults here (width 128, depth 50, gamma ~ N(1, 0.2^2),
    beta ~ N(0, 0.2^2), ReLU, GN with 8 groups of 16 channels) are our choices.

    Args:
      images: float [N, H, W, 3], standardized (N >= 2; BN uses the batch's statistics).
      norm: one of ``RANDOM_NET_NORMS``.
      Others as above; ``seed`` draws every parameter.

    Returns: list of ``depth`` dicts: ``depth`` (1-based), ``terms`` and ``fractions`` (as
      ``power_decomposition``).

    Raises: ValueError for an unknown norm or activation, a depth < 1, or groups that do
      not divide the width.
    """
    if norm not in RANDOM_NET_NORMS:
        raise ValueError("random net norm must be one of %s, got %r"
                         % (list(RANDOM_NET_NORMS), norm))
    if not isinstance(depth, int) or depth < 1:
        raise ValueError("random net depth must be an integer >= 1, got %r" % (depth,))
    if norm == "gn" and width % groups:
        raise ValueError("random net groups=%d must divide width=%d" % (groups, width))
    act = proxy_norm.get_activation(activation)
    rng = np.random.default_rng(seed)
    x = tf.convert_to_tensor(images, tf.float32)
    quantiles = tf.constant(proxy_norm.proxy_quantiles(200))[:, None]
    rows = []
    for layer in range(1, depth + 1):
        fan_in = kernel_size * kernel_size * x.shape[-1]
        kernel = rng.standard_normal((kernel_size, kernel_size, x.shape[-1], width))
        while np.any(np.abs(kernel) > 2):    # truncated at 2 std, as Keras' truncated normal
            bad = np.abs(kernel) > 2
            kernel[bad] = rng.standard_normal(int(bad.sum()))
        kernel = tf.constant(kernel / np.sqrt(fan_in) / 0.8796, tf.float32)  # unit variance
        x = periodic_conv(x, kernel, 2 if layer == 1 else 1)
        y = normalize(x, norm.split("_")[0], groups, epsilon)
        terms = decompose(*instance_statistics(y))
        rows.append(dict(depth=layer, terms=terms, fractions=layer_fractions(terms)))
        gamma = tf.constant(1.0 + gamma_std * rng.standard_normal(width), tf.float32)
        beta = tf.constant(beta_std * rng.standard_normal(width), tf.float32)
        x = act(y * gamma + beta)
        if norm.endswith("_pn"):
            mean, variance = tf.nn.moments(act(quantiles * gamma + beta), axes=[0])
            x = (x - mean) * tf.math.rsqrt(variance + 0.03)
    return rows


def theorem1_bound(depth, gamma_std=0.2, beta_std=0.2):
    """Theorem 1's rate for LN random nets, as we read it (its equation is not legible in
    our copy of the paper; the derivation is in the text after it): LN acts as a
    layer-wise constant scaling in wide nets, and each affine transform keeps the centred
    power rho_gamma^2 * V while adding rho_beta^2 to the power at the dataset scale, so the
    fraction of power not at the dataset scale shrinks by rho = rho_gamma^2 /
    (rho_gamma^2 + rho_beta^2) per layer, with equality for the identity activation and
    an upper bound for positively homogeneous ones such as ReLU. rho_gamma, rho_beta are
    the root mean squares of gamma and beta. Returns rho^(depth - 1): the bound at
    ``depth`` on 1 - channel_mean_sq relative to its value at layer 1."""
    rho_gamma_sq = 1.0 + gamma_std ** 2
    rho = rho_gamma_sq / (rho_gamma_sq + beta_std ** 2)
    return rho ** (depth - 1)
