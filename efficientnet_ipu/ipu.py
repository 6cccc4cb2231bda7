"""Graphcore IPU support: imported only when ``config.strategy.name == "ipu"``.

Needs the Poplar SDK's TensorFlow 2.6 (``tensorflow.python.ipu``) and, for GroupNorm and
recomputation checkpoints, ``ipu_tensorflow_addons``; neither is on PyPI, so this module
cannot be exercised on a machine without the SDK. Pipelining follows paper 001 sec. 3.4:
the model is split into stages at the blocks named in ``config.strategy.pipeline_splits``
(e.g. ``["block3b"]`` for B0 over 2 IPUs), micro-batches are accumulated over
``gradient_accumulation`` steps and each stage is recomputed before its backward pass.
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


def configure_pipeline(model, strategy_config, gradient_accumulation):
    """Assign pipeline stages by block name and set pipelining options on ``model``.

    Stage k starts at the k-th block named in ``pipeline_splits``; with no splits the
    model runs on one IPU per replica with gradient accumulation only.
    """
    ipu = _ipu_api()
    splits = list(strategy_config.pipeline_splits)
    if not splits:
        model.set_gradient_accumulation_options(
            gradient_accumulation_steps_per_replica=gradient_accumulation)
        return
    assignments = model.get_pipeline_stage_assignment()
    stage = 0
    for assignment in assignments:
        if stage < len(splits) and assignment.layer.name == splits[stage]:
            stage += 1
        assignment.pipeline_stage = stage
    model.set_pipeline_stage_assignment(assignments)
    model.set_pipelining_options(
        gradient_accumulation_steps_per_replica=gradient_accumulation,
        pipeline_schedule=ipu.ops.pipelining_ops.PipelineSchedule.Grouped,
        recomputation_mode=ipu.ops.pipelining_ops.RecomputationMode.RecomputeAndBackpropagateInterleaved)
