"""The inference graph of a trained model, for the export: the same function with the
per-channel affines that depend only on the weights folded into the convolutions (paper
001 sec. 4 measures inference at batch 1 and at the largest batch; it is what a served
model runs).

Within ``folded()``, layers traced into a graph (this thread) compute:

- proxy norm's statistics (paper 002 eq. 7) as constants of the current weights
  (``proxy_norm.constant_statistics``);
- under GN/LN/IN + PN, the MBConv block in its folded form (``proxy_norm_folded``): the
  expand activation's proxy mean and 1/std go into the group convolution (its input offset
  and its kernel), the group-conv activation's 1/std into the squeeze-excite gate and its
  mean into the projection's normalization;
- under BN, each MBConv convolution and the batch norm after it as one convolution: the
  inference-mode scale gamma / sqrt(moving_var + eps) multiplies the kernel's output
  channels, and the shift beta - moving_mean * scale becomes the bias (Ioffe & Szegedy,
  2015, sec. 3.2; TensorFlow's graph optimizer cannot do this itself, the kernels being
  variables). The activation follows, so the convolution, bias and activation can run as
  one fused op.

The folded kernels are computed once, when traced, and embedded as constants
(``constant``): computed from the variables at every call they would cost as much as the
batch-1 convolutions themselves (about 1 MB of kernel each in the last blocks). The export
therefore holds the folded kernels beside the variables.

The stem and top convolutions and their norms are separate layers of the functional model
and stay as they are. Only what runs changes: the weights, the checkpoints and the model
outside the block are untouched.
"""
import contextlib
import threading

import tensorflow as tf

from efficientnet_ipu import kernels as kernels_lib

_state = threading.local()


@contextlib.contextmanager
def folded():
    """Within the block (this thread), layers traced into a graph use the folded inference
    form above. For inference with final weights only: the constants are the weights'
    values when traced, and training-mode calls are not folded. Nestable."""
    from efficientnet_ipu.layers import proxy_norm  # it uses ``constant`` from here
    previous = getattr(_state, "on", False)
    _state.on = True
    try:
        with proxy_norm.constant_statistics(), kernels_lib.settings.override(fold=True):
            yield
    finally:
        _state.on = previous


def folds_batch_norm(training):
    """True if a convolution and the batch norm after it are traced as one convolution
    now: within ``folded()`` and not training."""
    return is_folded() and not training


def is_folded():
    """True within ``folded()`` (this thread)."""
    return getattr(_state, "on", False)


def constant(fn):
    """``fn()`` (a tensor or a nest of tensors computed from variables and constants),
    computed now, eagerly, and embedded as constants of the graph being traced. Meant for
    weights-only values within ``folded()``: the graph does not recompute them per call."""
    with tf.init_scope():  # eager, outside the graph being traced
        values = fn()
    return tf.nest.map_structure(lambda v: tf.constant(v.numpy()), values)
