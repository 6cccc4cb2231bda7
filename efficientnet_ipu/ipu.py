"""Graphcore IPU support: imported only when ``config.strategy.name == "ipu"``.

Needs the Poplar SDK's TensorFlow 2.6 (``tensorflow.python.ipu``); it is not on PyPI and no
IPU run was made where this project is developed. So this module is thin: every decision
(the IPUConfig fields, the pipeline stages, the accumulation options, steps per execution,
the validation mapping) is computed by ``efficientnet_ipu.ipu_plan`` and
``efficientnet_ipu.pipeline``, tested on any machine, and only applied here with the SDK's
calls (tested against a recording stand-in of ``tensorflow.python.ipu``).
"""
from efficientnet_ipu import ipu_plan, pipeline


def _ipu_api():
    try:
        from tensorflow.python import ipu  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise RuntimeError(
            "config.strategy.name='ipu' needs Graphcore's Poplar SDK TensorFlow "
            "(tensorflow.python.ipu), which is not installed here: %s" % error) from None
    return ipu


def make_ipu_strategy(strategy_config, precision="fp32"):
    """Configure and attach the IPUs (``ipu_plan.ipu_config_options``: replicas x stages
    IPUs, memory proportion, partials, recomputation, floating-point behaviour), and return
    an ``IPUStrategy``. Raises RuntimeError when the SDK is missing."""
    ipu = _ipu_api()
    options = ipu_plan.ipu_config_options(strategy_config, precision)
    cfg = ipu.config.IPUConfig()
    cfg.auto_select_ipus = options["auto_select_ipus"]
    cfg.allow_recompute = options["allow_recompute"]
    for section in ("matmuls", "convolutions"):
        for key, value in options[section].items():
            getattr(cfg, section).poplar_options[key] = value
    fp = options["floating_point_behaviour"]
    cfg.floating_point_behaviour.inv = fp["inv"]
    cfg.floating_point_behaviour.div0 = fp["div0"]
    cfg.floating_point_behaviour.oflo = fp["oflo"]
    cfg.floating_point_behaviour.esr = getattr(ipu.config.StochasticRoundingBehaviour,
                                               fp["esr"])
    cfg.configure_ipu_system()
    return ipu.ipu_strategy.IPUStrategy()


def prepare_model(model, config, steps_per_epoch):
    """Apply the pipeline stages and the accumulation options to a Keras model built in
    the IPUStrategy's scope; returns the ``steps_per_execution`` to compile it with.

    Stages: ``ipu_plan.pipeline_splits`` and ``pipeline.stage_assignment``, through
    ``model.get_pipeline_stage_assignment`` / ``set_pipeline_stage_assignment``. Options:
    ``ipu_plan.accumulation_options``."""
    ipu = _ipu_api()
    splits = ipu_plan.pipeline_splits(config, model)
    if splits:
        stage_of = dict(pipeline.stage_assignment(model, splits))
        assignments = model.get_pipeline_stage_assignment()
        for assignment in assignments:
            assignment.pipeline_stage = stage_of[assignment.layer.name]
        model.set_pipeline_stage_assignment(assignments)
    method, kwargs = ipu_plan.accumulation_options(config)
    if method == "set_pipelining_options":
        ops = ipu.ops.pipelining_ops
        kwargs = dict(kwargs, pipeline_schedule=getattr(ops.PipelineSchedule,
                                                        kwargs["pipeline_schedule"]))
        if "recomputation_mode" in kwargs:
            kwargs["recomputation_mode"] = getattr(ops.RecomputationMode,
                                                   kwargs["recomputation_mode"])
    if method:
        getattr(model, method)(**kwargs)
    return ipu_plan.steps_per_execution(config, steps_per_epoch)


def prepare_validation_model(model, config):
    """A pipelined model's validation runs on one IPU (paper 001 sec. 3.4): every stage
    mapped to IPU 0 (``ipu_plan.validation_device_mapping``)."""
    stages = config.strategy.ipus_per_replica
    if stages > 1:
        model.set_pipelining_options(
            device_mapping=ipu_plan.validation_device_mapping(stages))
