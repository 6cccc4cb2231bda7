"""Seeded randomness for the model's random layers (stochastic depth, dropout).

Within ``step_seed(seed)`` the random layers draw from TensorFlow's stateless random ops,
seeded by ``seed`` folded with a hash of the layer's name: the draws are a function of
(seed, layer), not of how many draws came before. The training loops pass a seed made of
``config.seed``, the optimizer step, the micro-batch and the replica, so that a run
resumed from a checkpoint (which holds the step) draws exactly what an uninterrupted run
draws (``efficientnet_ipu.train.step_seed``).

Outside ``step_seed`` (a model trained by the user's own loop, e.g. ``model.fit``) the
layers draw from TensorFlow's stateful random ops, as Keras' own layers do.

The seed is a trace-time value: ``step_seed`` must enclose the model call while the
``tf.function`` that calls it is traced, which the training loops do.
"""
import contextlib
import zlib

import tensorflow as tf

_SEEDS = []


@contextlib.contextmanager
def step_seed(seed):
    """Within: random layers draw from stateless ops seeded by ``seed`` (int32/int64 [2])."""
    _SEEDS.append(tf.cast(tf.convert_to_tensor(seed), tf.int64))
    try:
        yield
    finally:
        _SEEDS.pop()


def layer_seed(name):
    """The current step seed folded with ``name``'s CRC-32, int64 [2]; None outside
    ``step_seed``."""
    if not _SEEDS:
        return None
    return tf.random.experimental.stateless_fold_in(
        _SEEDS[-1], zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF)


def uniform(shape, name, dtype=tf.float32):
    """U[0, 1) of ``shape`` and ``dtype``: stateless from ``layer_seed(name)`` within
    ``step_seed``, else TensorFlow's stateful ``tf.random.uniform``."""
    seed = layer_seed(name)
    if seed is None:
        return tf.random.uniform(shape, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed, dtype=dtype)
