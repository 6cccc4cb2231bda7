"""Distribution strategy from ``config.strategy`` (the one place that chooses it).

"auto": MirroredStrategy with two or more GPUs, else the default strategy (one device:
CPU or a single GPU). "mirrored" is TensorFlow's MirroredStrategy over every local GPU, or,
without a GPU, over every logical CPU device; "multi_worker" is
MultiWorkerMirroredStrategy (the cluster comes from TF_CONFIG); "tpu" is TPUStrategy on
``config.strategy.tpu``; "ipu" imports ``efficientnet_ipu.ipu`` (Graphcore's SDK) only then.
"""
import tensorflow as tf


def make_strategy(strategy_config, precision="fp32"):
    """Return a ``tf.distribute.Strategy``. ``precision`` (``config.train.precision``)
    sets the IPUs' partials type.

    Raises:
      ValueError: unknown ``config.strategy.name``.
      RuntimeError: the chosen hardware or SDK is not available on this machine.
    """
    name = strategy_config.name
    if name == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # No GPU: every logical CPU device (one unless the process split the CPU with
        # tf.config.set_logical_device_configuration, as the tests do).
        return tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        if not strategy_config.tpu:
            raise ValueError("config.strategy.tpu must name the TPU (e.g. 'local' or a "
                             "TPU name) when config.strategy.name='tpu'")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=strategy_config.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "ipu":
        from efficientnet_ipu import ipu
        return ipu.make_ipu_strategy(strategy_config, precision)
    raise ValueError("config.strategy.name must be one of auto, default, mirrored, "
                     "multi_worker, tpu, ipu; got %r" % (name,))

