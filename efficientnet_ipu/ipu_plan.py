"""Everything the IPU module decides, as plain functions (no Poplar SDK needed), so that
they are tested on any machine; ``efficientnet_ipu.ipu`` only applies them with the SDK's
calls. Paper 001 sec. 3.4: pipelined, replicated training with micro-batches, gradient
accumulation, recomputation and fp16; validation on one IPU. The option names are those of
Graphcore's TensorFlow 2 API (``IPUConfig``, ``set_pipelining_options``,
``set_gradient_accumulation_options``).
"""
import math

from efficientnet_ipu import pipeline

PIPELINE_SCHEDULE = "Grouped"          # PipelineSchedule.Grouped
RECOMPUTATION_MODE = "RecomputeAndBackpropagateInterleaved"


def ipu_config_options(strategy_config, precision):
    """The ``IPUConfig`` fields for ``config.strategy`` and ``config.train.precision``.

    Returns: dict with ``auto_select_ipus`` (replicas x pipeline stages),
      ``allow_recompute``, ``matmuls`` and ``convolutions`` (Poplar options:
      ``availableMemoryProportion`` as a string, ``partialsType`` "half" under fp16 with
      ``half_partials``, else "float"), and ``floating_point_behaviour`` (``inv``, ``div0``,
      ``oflo`` = ``fp_exceptions``; ``esr`` "ON" / "OFF" = ``stochastic_rounding``, which
      only acts on fp16).
    """
    s = strategy_config
    poplar = {"availableMemoryProportion": str(float(s.available_memory_proportion)),
              "partialsType": "half" if s.half_partials and precision == "fp16" else "float"}
    return dict(
        auto_select_ipus=s.replicas * s.ipus_per_replica,
        allow_recompute=bool(s.recomputation),
        matmuls=dict(poplar), convolutions=dict(poplar),
        floating_point_behaviour=dict(inv=s.fp_exceptions, div0=s.fp_exceptions,
                                      oflo=s.fp_exceptions,
                                      esr="ON" if s.stochastic_rounding else "OFF"))


def pipeline_splits(config, model):
    """The split points of a run: ``config.strategy.pipeline_splits`` if given, else the
    paper's for its size and group size (``pipeline.PAPER_SPLITS``) when they have
    ``ipus_per_replica`` stages, else stages balanced by ``pipeline_cost`` at the training
    size. () for one stage."""
    s = config.strategy
    if s.ipus_per_replica == 1:
        return ()
    given = tuple(b for b in s.pipeline_splits.split(",") if b)
    if given:
        pipeline.check_splits(model, given)
        return given
    return pipeline.splits_for(
        config.model.size, config.model.group_size, model, s.ipus_per_replica,
        lambda: pipeline.layer_costs(model, config.image_size.train, s.pipeline_cost))


def accumulation_options(config):
    """(method, kwargs) for the model: with pipeline stages,
    ``set_pipelining_options`` with the gradient accumulation steps per replica, the
    Grouped schedule and, with recomputation, RecomputeAndBackpropagateInterleaved;
    without, ``set_gradient_accumulation_options`` with the accumulation steps (None when
    there is nothing to accumulate)."""
    t, s = config.train, config.strategy
    if s.ipus_per_replica > 1:
        kwargs = dict(gradient_accumulation_steps_per_replica=t.gradient_accumulation,
                      pipeline_schedule=PIPELINE_SCHEDULE)
        if s.recomputation:
            kwargs["recomputation_mode"] = RECOMPUTATION_MODE
        return "set_pipelining_options", kwargs
    if t.gradient_accumulation > 1:
        return "set_gradient_accumulation_options", dict(
            gradient_accumulation_steps_per_replica=t.gradient_accumulation)
    return None, {}


def steps_per_execution(config, steps_per_epoch):
    """Micro-batches per device execution (Keras' ``steps_per_execution`` on IPUs): a
    whole number of optimizer steps (a multiple of the accumulation count, as the IPU
    requires), as many as divide both the epoch and the logging period so that
    executions end at each log line and each epoch end."""
    t = config.train
    steps = math.gcd(int(steps_per_epoch), int(t.log_every_steps)) or 1
    return steps * t.gradient_accumulation


def validation_device_mapping(stages):
    """Validation runs the whole model on one IPU: every stage mapped to IPU 0."""
    return [0] * stages


def static_loss_scale(config):
    """The static loss scale of fp16 training on IPUs (``train.loss_scale``; "dynamic"
    is not available there). Raises ValueError for "dynamic" under fp16."""
    t = config.train
    if t.precision != "fp16":
        return None
    if t.loss_scale == "dynamic":
        raise ValueError("config.train.loss_scale must be a number on IPUs (a static loss "
                         "scale, e.g. 128 as in paper 001), got 'dynamic'")
    return float(t.loss_scale)
