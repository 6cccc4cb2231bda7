"""Graphcore IPU support: imported only when ``config.strategy.name == "ipu"``.

Needs the Poplar SDK's TensorFlow 2.6 (``tensorflow.python.ipu``) and, for GroupNorm and
recomputation checkpoints, ``ipu_tensorflow_addons``; neither is on PyPI, so this module
cannot be exercised on a machine without the SDK. What is here selects the IPUs and
returns the strategy; pipelined training (paper 001 sec. 3.4: stages split at named blocks,
e.g. at ``block3b`` for B0 over 2 IPUs, with recomputation) is not wired into the training
loop yet.
"""


def _ipu_api():
    try:
        from tensorflow.python import ipu  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise RuntimeError(
            "config.strategy.name='ipu' needs Graphcore's Poplar SDK TensorFlow "
            "(tensorflow.python.ipu), which is not installed here: %s" % error) from None
    return ipu


def make_ipu_strategy(strategy_config):
    """Configure and attach IPUs, return an ``IPUStrategy``.

    Selects ``replicas x ipus_per_replica`` IPUs (IPUConfig.auto_select_ipus).
    Raises RuntimeError when the SDK is missing.
    """
    ipu = _ipu_api()
    ipu_config = ipu.config.IPUConfig()
    ipu_config.auto_select_ipus = strategy_config.replicas * strategy_config.ipus_per_replica
    ipu_config.configure_ipu_system()
    return ipu.ipu_strategy.IPUStrategy()

