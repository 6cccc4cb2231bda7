"""Proxy-normalized activations (paper 002 sec. 5, eq. 7; paper 001 eq. 4).

For each channel c, with y the (batch-independently) normalized pre-activation:

    z = (act(gamma * y + beta) - E[act(gamma * Y~ + beta)])
        * rsqrt(Var[act(gamma * Y~ + beta)] + eps~),     Y~ ~ N(beta~, (1 + gamma~)^2)

The proxy expectation is taken over fixed standard-normal quantiles
q_i = Phi^-1((i + 0.5) / n), i = 0..n-1 (n = 200, "uniformly sampled in probability",
paper 002 Appendix A.1 and B; Graphcore's code: sqrt(2) * erfinv(2 (i + 0.5) / n - 1)).
Proxy statistics are always computed in float32. eps~ = 0.03 (paper 001 sec. 3.4).

One deliberate difference from Graphcore's code: the quantiles are rescaled to unit
variance (the raw midpoint quantiles have variance 0.9936 for n = 200, which biases the
proxy variance low by about 0.6 %). With the rescaling the proxy moments of swish and ReLU
agree with numerical integration to better than 1e-3 at initialisation (gamma = 1,
beta = beta~ = gamma~ = 0); over gamma in [0.5, 1.5], beta in [-1, 1] and proxy
parameters in [-0.2, 0.2] the worst errors are 1.3e-3 (mean) and 3.5e-3 (variance) with
200 quantiles, and 3e-4 / 7e-4 with 1000 (``num_proxy_samples``).
"""
from statistics import NormalDist

from tensorflow import keras
import numpy as np
import tensorflow as tf

from efficientnet_ipu.layers import kernels


@tf.custom_gradient
def swish(x):
    """Swish / SiLU, x * sigmoid(x) (Ramachandran et al., 2017; EfficientNet's activation).

    The forward is ``tf.nn.silu`` (one fused kernel). The gradient is
    dy * (y + sigmoid(x) (1 - y)) with y = swish(x): 5 element-wise passes instead of the
    8 of TensorFlow's own silu gradient (which also differentiates its ``beta``), equal to
    it up to float round-off. Any shape and float dtype.
    """
    y = tf.nn.silu(x)

    def grad(dy):
        s = tf.sigmoid(x)
        return dy * (y + s * (1.0 - y))
    return y, grad


ACTIVATIONS = {
    "swish": swish,
    "silu": swish,
    "relu": tf.nn.relu,
    "gelu": tf.nn.gelu,
    "linear": tf.identity,
}

MODES = ("normalize", "center", "split")
IMPLEMENTATIONS = ("auto", "fused", "tensorflow")
# The fused op's name for each activation it computes.
FUSED_ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu",
                     "linear": "linear"}


def get_activation(name):
    """The TensorFlow function for an activation name in ``ACTIVATIONS``.

    Raises:
      ValueError: unknown name (the message lists the allowed ones).
    """
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError("activation must be one of %s, got %r"
                         % (sorted(ACTIVATIONS), name)) from None


class Activation(keras.layers.Layer):
    """An activation from ``ACTIVATIONS`` by name, as a layer (keras.applications names
    these ``<prefix>activation``). Input and output: any shape, same dtype.

    Raises: ValueError for an unknown ``activation`` (the message lists the allowed ones).
    """

    def __init__(self, activation="swish", **kwargs):
        super().__init__(**kwargs)
        self.activation_fn = get_activation(activation)
        self.activation = activation

    def call(self, inputs):
        return self.activation_fn(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dict(activation=self.activation))
        return config


def proxy_quantiles(num_samples):
    """Fixed standard-normal quantiles Phi^-1((i + 0.5) / n), rescaled to unit variance.

    Returns: float32 numpy array [num_samples], symmetric about 0, variance exactly 1.
    Raises: ValueError if ``num_samples`` < 2.
    """
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError("num_proxy_samples must be an integer >= 2, got %r" % (num_samples,))
    normal = NormalDist()
    q = np.array([normal.inv_cdf((i + 0.5) / num_samples) for i in range(num_samples)])
    return (q / np.sqrt(np.mean(q ** 2))).astype(np.float32)


def choose_implementation():
    """What ``implementation="auto"`` of ProxyNormActivation picks: "fused" (this project's
    CPU op, ``kernels``) on a machine with only CPUs where the op library builds (AVX2+FMA
    CPU and a C++ compiler; without them a warning says so), else "tensorflow".

    Why: the proxy statistics are [n, C] tensors (n = 200), so on CPU their cost is
    TensorFlow's per-op overhead, not arithmetic: about 35 ops per layer, forward and
    backward (the fused op cuts B0-G16-LN+PN's training graph from 16.7k to 13.9k ops).
    Measured on this project's 2-core CPU, batch 32, B0-G16-LN+PN training (``python -m
    efficientnet_ipu.benchmark --compare-proxy``, issue #4): 1.03-1.05x at 224 px,
    0.99-1.04x at 160 px, 1.04x at 32 px; for G1 1.00x (within the machine's noise).
    GPUs, TPUs and IPUs keep "tensorflow" (their compilers fuse such small graphs)."""
    if not kernels.cpu_only():
        return "tensorflow"
    if kernels.available():
        return "fused"
    kernels.warn_once(
        "ProxyNormActivation: this CPU or machine cannot build the fused proxy-statistics "
        "op (AVX2+FMA: %s, C++ compiler: %s), so implementation='auto' uses TensorFlow ops, "
        "which are slower here" % (kernels.cpu_supported(), kernels.compiler()))
    return "tensorflow"


def fused_proxy_mean_scale(gamma, beta, proxy_gamma, proxy_beta, quantiles, activation,
                           epsilon):
    """Proxy mean and rsqrt(proxy variance + eps~) of act(gamma * Y~ + beta), with
    Y~ = q * (1 + proxy_gamma) + proxy_beta over the quantiles q (paper 002 eq. 7), as one
    op of this project's CPU library (``csrc/proxy_norm.cc``), with a one-op gradient.

    Args:
      gamma, beta, proxy_gamma, proxy_beta: float32 [C].
      quantiles: float32 [n], n >= 2.
      activation: a name in ``FUSED_ACTIVATIONS``.
      epsilon: eps~ > 0.

    Returns:
      (mean, scale), float32 [C] each; equal to ``ProxyNormActivation.proxy_moments`` (then
      rsqrt(var + eps~)) up to float32 round-off.

    Raises:
      RuntimeError: the library cannot be built (see ``kernels.load``).
      ValueError: an activation the op does not compute.
      tf.errors.InvalidArgumentError: shapes as above violated.
    """
    if activation not in FUSED_ACTIVATIONS:
        raise ValueError("the fused proxy statistics compute activations %s, got %r"
                         % (sorted(FUSED_ACTIVATIONS), activation))
    library = kernels.load("ProxyNormActivation implementation='fused'",
                           "implementation='tensorflow'")
    mean, scale, _ = library.efficientnet_ipu_proxy_mean_scale(
        gamma, beta, proxy_gamma, proxy_beta, quantiles,
        activation=FUSED_ACTIVATIONS[activation], epsilon=float(epsilon))
    return mean, scale


@tf.RegisterGradient("EfficientnetIpuProxyMeanScale")
def _fused_gradient(op, grad_mean, grad_scale, unused_grad_sums):
    """Gradients of the fused proxy statistics with respect to gamma, beta, proxy_gamma,
    proxy_beta (none for the quantiles), in one op of a few multiply-adds per channel: the
    forward op's third output holds the four means over the quantiles that the gradient is
    linear in (``csrc/proxy_norm.cc``). That output only feeds this gradient."""
    mean, scale, sums = op.outputs
    if grad_mean is None:
        grad_mean = tf.zeros_like(mean)
    if grad_scale is None:
        grad_scale = tf.zeros_like(scale)
    gamma, _, proxy_gamma, proxy_beta, _ = op.inputs
    grads = kernels.load().efficientnet_ipu_proxy_mean_scale_grad(
        gamma, proxy_gamma, proxy_beta, scale, sums, grad_mean, grad_scale)
    return list(grads) + [None]


class ProxyNormActivation(keras.layers.Layer):
    """Channel-wise affine + activation + proxy normalization on NHWC tensors.

    Owns the channel-wise affine (beta, gamma) that precedes the activation, so the
    normalization layer before it should have ``center=False, scale=False``. With
    ``proxy_params=True`` it also owns beta~ and gamma~ (initialised to 0, meant to be
    subject to weight decay; their weights are named ``proxy_beta`` and ``proxy_gamma``).

    Args:
      activation: name in ``ACTIVATIONS`` ("swish" by default).
      proxy_epsilon: eps~ > 0 in eq. 7 (0.03).
      num_proxy_samples: number of proxy quantiles (200).
      proxy_params: learn beta~ and gamma~ (True) or fix the proxy to N(0, 1) (False).
      mode: what is returned, for the three uses in Graphcore's EfficientNet:
        "normalize": eq. 7, the full proxy-normalized activation;
        "center": the activation minus its proxy mean, unscaled (before global pooling,
          paper 002 Appendix A.1: "we disable the scaling part of PN ... just before the
          final mean pooling");
        "split": a tuple (activation minus proxy mean, rsqrt(proxy var + eps~) of shape
          [C]) so that the squeeze-excite gate can apply the scale.
      implementation: how the proxy statistics are computed, one of ``IMPLEMENTATIONS``:
        "tensorflow" (TensorFlow ops: runs anywhere), "fused" (one op of this project's
        CPU library and one for the gradient: ``fused_proxy_mean_scale``) or "auto"
        (default: ``choose_implementation``). The same function either way; under
        ``kernels.portable_kernels()`` (SavedModel export) "fused" traces as "tensorflow".

    Input: [N, H, W, C] float (any compute dtype). Output: same shape and dtype
    (plus the [C] scale in the compute dtype for mode "split").

    Raises:
      ValueError: unknown ``activation``, ``mode`` or ``implementation``,
        ``proxy_epsilon`` <= 0, ``num_proxy_samples`` < 2.
      RuntimeError: (at build time) "fused" where the op library cannot be built.
    """

    def __init__(self, activation="swish", proxy_epsilon=0.03, num_proxy_samples=200,
                 proxy_params=True, mode="normalize", implementation="auto", **kwargs):
        super().__init__(**kwargs)
        self.activation_fn = get_activation(activation)
        if mode not in MODES:
            raise ValueError("ProxyNormActivation mode must be one of %s, got %r"
                             % (MODES, mode))
        if implementation not in IMPLEMENTATIONS:
            raise ValueError("ProxyNormActivation implementation must be one of %s, got %r"
                             % (IMPLEMENTATIONS, implementation))
        self.implementation = implementation
        if not proxy_epsilon > 0:
            raise ValueError("proxy_epsilon must be > 0, got %r" % (proxy_epsilon,))
        self.activation = activation
        self.proxy_epsilon = float(proxy_epsilon)
        self.num_proxy_samples = num_proxy_samples
        self.quantiles = proxy_quantiles(num_proxy_samples)
        self.proxy_params = proxy_params
        self.mode = mode

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones",
                                     trainable=True)
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros",
                                    trainable=True)
        self.resolved_implementation = self.implementation
        if self.implementation == "auto":
            self.resolved_implementation = choose_implementation()
        if self.resolved_implementation == "fused":
            kernels.load("ProxyNormActivation implementation='fused'",
                         "implementation='tensorflow'")  # compile now, before any training
        self.proxy_gamma = self.proxy_beta = None
        if self.proxy_params:
            self.proxy_gamma = self.add_weight(name="proxy_gamma", shape=(channels,),
                                               initializer="zeros", trainable=True)
            self.proxy_beta = self.add_weight(name="proxy_beta", shape=(channels,),
                                              initializer="zeros", trainable=True)
        super().build(input_shape)

    def proxy_moments(self):
        """Proxy mean and variance of act(gamma * Y~ + beta), float32 [C] each."""
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        proxy = tf.constant(self.quantiles)[:, None]                 # [n, 1]
        if self.proxy_params:
            proxy = proxy * (1.0 + tf.cast(self.proxy_gamma, tf.float32)) + tf.cast(
                self.proxy_beta, tf.float32)                         # [n, C]
        z = self.activation_fn(proxy * gamma + beta)                  # [n, C]
        return tf.nn.moments(z, axes=[0])

    def call(self, inputs):
        dtype = inputs.dtype
        activated = self.activation_fn(inputs * tf.cast(self.gamma, dtype)
                                       + tf.cast(self.beta, dtype))
        return self.normalize_activated(activated)

    def proxy_mean_scale(self):
        """Proxy mean and rsqrt(proxy variance + eps~), float32 [C] each: one fused op
        where ``implementation`` resolved to "fused" (outside ``kernels.portable_kernels()``),
        else ``proxy_moments``."""
        if self.resolved_implementation == "fused" and not kernels.portable():
            gamma = tf.cast(self.gamma, tf.float32)
            if self.proxy_params:
                proxy_gamma = tf.cast(self.proxy_gamma, tf.float32)
                proxy_beta = tf.cast(self.proxy_beta, tf.float32)
            else:
                proxy_gamma = proxy_beta = tf.zeros_like(gamma)
            return fused_proxy_mean_scale(gamma, tf.cast(self.beta, tf.float32), proxy_gamma,
                                          proxy_beta, tf.constant(self.quantiles),
                                          self.activation, self.proxy_epsilon)
        mean, variance = self.proxy_moments()
        return mean, tf.math.rsqrt(variance + self.proxy_epsilon)

    def normalize_activated(self, activated):
        """The proxy normalization of already activated values act(gamma y + beta), in this
        layer's ``mode`` (``call``'s second half; NormActivation applies the same through
        ``norm.scale_shift_activation``'s ``post``)."""
        dtype = activated.dtype
        mean, scale = self.proxy_mean_scale()
        # x + (-mean) rather than x - mean: the gradient of a broadcast subtraction negates
        # the whole upstream gradient before reducing it, one more pass over the tensor.
        centered = activated + tf.cast(-mean, dtype)
        if self.mode == "center":
            return centered
        scale = tf.cast(scale, dtype)
        if self.mode == "split":
            return centered, scale
        return centered * scale

    def compute_output_shape(self, input_shape):
        if self.mode == "split":
            return input_shape, (input_shape[-1],)
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(dict(activation=self.activation, proxy_epsilon=self.proxy_epsilon,
                           num_proxy_samples=self.num_proxy_samples,
                           proxy_params=self.proxy_params, mode=self.mode,
                           implementation=self.implementation))
        return config
