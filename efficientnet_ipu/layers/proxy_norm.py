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
import contextlib
from statistics import NormalDist
import threading

from tensorflow import keras
import numpy as np
import tensorflow as tf

from efficientnet_ipu import kernels as kernels_lib  # ``kernels`` is also an argument
from efficientnet_ipu.layers import inference


_constants = threading.local()


@contextlib.contextmanager
def constant_statistics():
    """Within the block (this thread), ProxyNormActivation layers traced into a graph
    compute their proxy mean and scale once, from the weights' values at that moment, and
    embed them as constants. The statistics depend only on the weights (eq. 7), so an
    inference graph of final weights (the export) computes the same function without the
    quantile pass (about 35 small ops per layer) at every call. Nestable."""
    previous = getattr(_constants, "on", False)
    _constants.on = True
    try:
        yield
    finally:
        _constants.on = previous


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
      kernels: "auto" (default: the proxy statistics as one op of this project's CPU
        library where it applies, ``kernels.proxy_mean_scale``) or "tensorflow"
        (TensorFlow ops). The same function either way. ``implementation`` is this
        option's former name (deprecated).

    Input: [N, H, W, C] float (any compute dtype). Output: same shape and dtype
    (plus the [C] scale in the compute dtype for mode "split").

    Raises:
      ValueError: unknown ``activation``, ``mode``, ``kernels`` or ``implementation``,
        ``proxy_epsilon`` <= 0, ``num_proxy_samples`` < 2.
    """

    def __init__(self, activation="swish", proxy_epsilon=0.03, num_proxy_samples=200,
                 proxy_params=True, mode="normalize", kernels="auto", implementation=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.activation_fn = get_activation(activation)
        if mode not in MODES:
            raise ValueError("ProxyNormActivation mode must be one of %s, got %r"
                             % (MODES, mode))
        self.kernels = kernels_lib.settings.resolve_options(
            "ProxyNormActivation", kernels,
            proxy_implementation=implementation)["proxy_kernels"]
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
        """Proxy mean and rsqrt(proxy variance + eps~), float32 [C] each, from
        ``proxy_moments`` (through ``kernels.proxy_mean_scale``); constants of the current
        weights within ``constant_statistics``."""
        if getattr(_constants, "on", False):
            return inference.constant(self._proxy_mean_scale)
        return self._proxy_mean_scale()

    def _proxy_mean_scale(self):
        def reference():
            mean, variance = self.proxy_moments()
            return mean, tf.math.rsqrt(variance + self.proxy_epsilon)
        gamma = tf.cast(self.gamma, tf.float32)
        if self.proxy_params:
            proxy_gamma = tf.cast(self.proxy_gamma, tf.float32)
            proxy_beta = tf.cast(self.proxy_beta, tf.float32)
        else:
            proxy_gamma = proxy_beta = tf.zeros_like(gamma)
        return kernels_lib.proxy_mean_scale(
            gamma, tf.cast(self.beta, tf.float32), proxy_gamma, proxy_beta,
            tf.constant(self.quantiles), self.activation, self.proxy_epsilon, self.kernels,
            reference=reference)

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
                           kernels=self.kernels))
        return config
