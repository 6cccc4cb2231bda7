"""The optimizer step: RMSProp as TF1's ``RMSPropOptimizer`` computes it (the papers'
optimizer, one fused op per variable), and gradient accumulation over micro-batches
(``sum_over_micro_batches``).

Paper 001 (Making EfficientNet More Efficient) sec. 3.4 trains with RMSProp as in
EfficientNet's TF1 code; ``../shared/papers/README.md`` ("Recipe") gives Graphcore's
settings: momentum 0.9, epsilon 1e-3 inside the square root, decay rho = 1 - 2^-14 x global
batch. TF1's optimizer starts the mean-square accumulators at 1 and runs, per variable, the
``ApplyRMSProp`` kernel (tensorflow/core/kernels/training_ops.cc):

    ms  <- rho ms + (1 - rho) g^2
    mom <- momentum mom + lr g / sqrt(ms + epsilon)
    var <- var - mom

Keras' RMSprop (Keras 3 and tf-keras alike) computes the same three lines for
``momentum > 0``, but as about a dozen separate TensorFlow ops per variable, and it starts
``ms`` at 0. ``RMSPropTF1`` keeps Keras' RMSprop (its hyperparameters, config, slot names
``velocity`` and ``momentum``, and so its checkpoints) and changes two things: ``velocity``
(= ms) starts at 1, and each update is the one fused ``ResourceApplyRMSProp`` op.
One op instead of a dozen matters on CPU, where small ops cost their dispatch
(``python -m efficientnet_ipu.benchmark --optimizers`` times the three updates).
"""
import inspect

from tensorflow import keras
import tensorflow as tf


def _resource(variable):
    """The resource handle of a Keras 3 variable (its ``.value``) or a ``tf.Variable``."""
    if not isinstance(variable, tf.Variable):
        variable = variable.value
    return variable.handle


def paper_rmsprop_arguments(train_config, global_batch):
    """RMSProp's rho, momentum and epsilon from ``config.train`` (``config.base_config``):
    rho = 1 - ``rmsprop_decay_per_example`` x ``global_batch`` (images per optimizer step),
    as the papers' recipe scales it. A dict of keyword arguments for ``RMSPropTF1`` (or
    Keras' RMSprop)."""
    return dict(rho=1.0 - train_config.rmsprop_decay_per_example * global_batch,
                momentum=train_config.momentum, epsilon=train_config.rmsprop_epsilon)


class RMSPropTF1(keras.optimizers.RMSprop):
    """Keras RMSprop with TF1's accumulator start (ms = 1) and one fused
    ``ResourceApplyRMSProp`` op per variable (module docstring for the update).

    Args: as ``keras.optimizers.RMSprop``: ``learning_rate`` (float or schedule), ``rho``
    (decay of ms), ``momentum``, ``epsilon`` (added to ms inside the square root, as in TF1),
    plus Keras' common optimizer arguments. ``centered`` is not supported.

    Raises:
      ValueError: ``centered=True``, or ``momentum``/``rho`` outside [0, 1), or
        ``epsilon`` <= 0.
      NotImplementedError: on Keras <= 2.10 (OptimizerV2, e.g. IPU TensorFlow 2.6), which
        has no ``update_step``; there, Keras' own RMSprop with momentum > 0 already runs
        ``ResourceApplyRMSProp``.
      TypeError (at the update): a sparse gradient (``tf.IndexedSlices``); these models
        have none, and TF1's lazy sparse update is not implemented.
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, name="rmsprop_tf1", **kwargs):
        if not hasattr(keras.optimizers.Optimizer, "update_step"):
            raise NotImplementedError(
                "RMSPropTF1 needs the Keras optimizer API with update_step (Keras 3, or "
                "tf-keras >= 2.11); this is Keras %s" % getattr(keras, "__version__", "?"))
        if centered:
            raise ValueError("RMSPropTF1: centered must be False (TF1's ApplyRMSProp is the "
                             "uncentered update)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError("RMSPropTF1: momentum must be in [0, 1); got %r" % (momentum,))
        if not 0.0 <= rho < 1.0:
            raise ValueError("RMSPropTF1: rho must be in [0, 1); got %r" % (rho,))
        if not epsilon > 0.0:
            raise ValueError("RMSPropTF1: epsilon must be > 0; got %r" % (epsilon,))
        super().__init__(learning_rate=learning_rate, rho=rho, momentum=momentum,
                         epsilon=epsilon, centered=False, name=name, **kwargs)

    def build(self, var_list):
        """Create ``velocity`` (ms, initialised to 1) and ``momentum`` (0) for every
        variable in ``var_list``."""
        if getattr(self, "built", False) or getattr(self, "_built", False):
            return
        keras.optimizers.Optimizer.build(self, var_list)
        keras3 = "initializer" in inspect.signature(
            self.add_variable_from_reference).parameters
        self._velocities, self._momentums, self._average_gradients = [], [], []
        for var in var_list:
            if keras3:
                self._velocities.append(self.add_variable_from_reference(
                    var, name="velocity", initializer="ones"))
                self._momentums.append(self.add_variable_from_reference(var, name="momentum"))
            else:  # tf-keras
                self._velocities.append(self.add_variable_from_reference(
                    var, "velocity", initial_value=tf.ones(var.shape, var.dtype)))
                self._momentums.append(self.add_variable_from_reference(var, "momentum"))
        if not keras3:
            self._built = True

    def update_step(self, gradient, variable, learning_rate=None):
        """One ``ResourceApplyRMSProp`` on ``variable`` (Keras 3 passes ``learning_rate``;
        tf-keras does not, and the current one is read from the optimizer)."""
        if isinstance(gradient, tf.IndexedSlices):
            raise TypeError("RMSPropTF1: sparse gradients (tf.IndexedSlices) are not "
                            "supported; got one for %s" % (variable.name,))
        dtype = variable.dtype
        if learning_rate is None:
            learning_rate = self.learning_rate
        index = self._get_variable_index(variable) if hasattr(
            self, "_get_variable_index") else self._index_dict[self._var_key(variable)]
        return tf.raw_ops.ResourceApplyRMSProp(
            var=_resource(variable), ms=_resource(self._velocities[index]),
            mom=_resource(self._momentums[index]),
            lr=tf.cast(learning_rate, dtype), rho=tf.cast(self.rho, dtype),
            momentum=tf.cast(self.momentum, dtype), epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))


def sum_over_micro_batches(micro_batch, count, in_flight, zeros):
    """Gradient accumulation: the sum over i = 0 .. ``count`` - 1 of ``micro_batch(i)``, a
    nest of tensors (e.g. gradients, loss) with the structure, shapes and dtypes of
    ``zeros``, computed in one ``tf.while_loop`` inside the caller's graph.

    Up to ``in_flight`` micro-batches run at the same time (the loop's
    ``parallel_iterations``): one micro-batch's forward and backward pass is a chain of
    many small ops that leaves CPU cores idle part of the time, and a second one in flight
    fills them (``python -m efficientnet_ipu.benchmark --gradient-accumulation=4
    --compare-in-flight`` measures it). Each micro-batch in flight holds its own activations.

    Raises: ValueError if ``count`` or ``in_flight`` is not an integer >= 1.
    """
    for name, value in (("count", count), ("in_flight", in_flight)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError("sum_over_micro_batches: %s must be an integer >= 1; got %r"
                             % (name, value))

    def body(i, total):
        return i + 1, tf.nest.map_structure(tf.add, total, micro_batch(i))

    _, total = tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), zeros),
                             parallel_iterations=in_flight)
    return total
