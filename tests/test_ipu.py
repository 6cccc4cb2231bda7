"""The IPU path (ipu_plan.py, ipu.py; paper 001 sec. 3.4). The Poplar SDK cannot be
installed here, so the decisions are checked as plain functions and the SDK calls against
``RecordingIPU``, a recording stand-in for ``tensorflow.python.ipu`` that keeps every
attribute set and every call with its arguments, named as Graphcore's API names them."""
import types

import pytest

from efficientnet_ipu import config as config_lib
from efficientnet_ipu import ipu, ipu_plan, models, pipeline


def paper_config(ipus_per_replica=2, replicas=8, accumulation=6, precision="fp16"):
    """B0-G16 as the paper ran it on 16 IPUs: replicas x stages = 16, micro-batch 8 x
    accumulation x replicas = global batch 384 here (768 with accumulation 12)."""
    c = config_lib.base_config()
    c.model.size, c.model.group_size, c.model.norm = "b0", 16, "ln_pn"
    c.strategy.name = "ipu"
    c.strategy.ipus_per_replica, c.strategy.replicas = ipus_per_replica, replicas
    c.train.micro_batch_size, c.train.gradient_accumulation = 8, accumulation
    c.train.precision, c.train.loss_scale = precision, "128"
    c.train.log_every_steps = 50
    config_lib.validate(c)
    return c


def test_ipu_config_options_follow_the_strategy_config():
    c = paper_config()
    options = ipu_plan.ipu_config_options(c.strategy, c.train.precision)
    assert options["auto_select_ipus"] == 16
    assert options["allow_recompute"] is True
    assert options["convolutions"] == options["matmuls"] == {
        "availableMemoryProportion": "0.6", "partialsType": "half"}
    assert options["floating_point_behaviour"] == dict(inv=False, div0=False, oflo=False,
                                                       esr="ON")
    c.strategy.fp_exceptions, c.strategy.stochastic_rounding = True, False
    fp = ipu_plan.ipu_config_options(c.strategy, "fp32")
    assert fp["floating_point_behaviour"] == dict(inv=True, div0=True, oflo=True, esr="OFF")
    assert fp["matmuls"]["partialsType"] == "float"   # fp32 keeps float partials


def test_splits_accumulation_steps_and_loss_scale():
    model = models.EfficientNet("b0", group_size=16)
    c = paper_config()
    assert ipu_plan.pipeline_splits(c, model) == ("block3b",)        # Graphcore's split
    c.strategy.ipus_per_replica = 4                                    # no paper split
    splits = ipu_plan.pipeline_splits(c, model)
    assert len(splits) == 3
    c.strategy.pipeline_splits = "block2b,block4a,block6a"
    assert ipu_plan.pipeline_splits(c, model) == ("block2b", "block4a", "block6a")
    c = paper_config()
    assert ipu_plan.accumulation_options(c) == ("set_pipelining_options", dict(
        gradient_accumulation_steps_per_replica=6, pipeline_schedule="Grouped",
        recomputation_mode="RecomputeAndBackpropagateInterleaved"))
    one = paper_config(ipus_per_replica=1, replicas=16)
    assert ipu_plan.accumulation_options(one) == (
        "set_gradient_accumulation_options", dict(gradient_accumulation_steps_per_replica=6))
    assert ipu_plan.accumulation_options(paper_config(1, 16, accumulation=1)) == (None, {})
    # Executions end at log lines and epoch ends, in whole optimizer steps.
    assert ipu_plan.steps_per_execution(c, steps_per_epoch=100) == 50 * 6
    assert ipu_plan.steps_per_execution(c, steps_per_epoch=30) == 10 * 6
    assert ipu_plan.validation_device_mapping(4) == [0, 0, 0, 0]
    assert ipu_plan.static_loss_scale(c) == 128.0
    c.train.loss_scale = "dynamic"
    with pytest.raises(ValueError, match="static loss scale"):
        ipu_plan.static_loss_scale(c)


def test_config_refuses_bad_ipu_options():
    for field, value, message in (
            ("pipeline_cost", "flops", "strategy.pipeline_cost"),
            ("pipeline_splits", "block3b,block5a", "ipus_per_replica - 1 = 1"),
            ("available_memory_proportion", 1.5, "strategy.available_memory_proportion"),
            ("available_memory_proportion", 0.0, "strategy.available_memory_proportion")):
        c = paper_config()
        c.strategy[field] = value
        with pytest.raises(ValueError, match=message):
            config_lib.validate(c)


class Recorder:
    """An object that records every attribute set on it (``sets``) and every call of a
    method (``calls``), and hands out recording children for other attributes."""

    def __init__(self, log, path):
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "poplar_options", {})

    def __getattr__(self, name):
        child = Recorder(self._log, self._path + "." + name)
        object.__setattr__(self, name, child)
        return child

    def __setattr__(self, name, value):
        self._log.append(("set", self._path + "." + name, value))
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        self._log.append(("call", self._path, args, kwargs))
        return Recorder(self._log, self._path + "()")


def recording_ipu(log):
    """RecordingIPU: ``tensorflow.python.ipu`` as far as this project calls it."""
    api = types.SimpleNamespace()
    api.config = types.SimpleNamespace(
        IPUConfig=lambda: Recorder(log, "IPUConfig"),
        StochasticRoundingBehaviour=types.SimpleNamespace(ON="ESR.ON", OFF="ESR.OFF"))
    api.ipu_strategy = types.SimpleNamespace(
        IPUStrategy=lambda: log.append(("call", "IPUStrategy", (), {})) or "strategy")
    api.ops = types.SimpleNamespace(pipelining_ops=types.SimpleNamespace(
        PipelineSchedule=types.SimpleNamespace(Grouped="PipelineSchedule.Grouped"),
        RecomputationMode=types.SimpleNamespace(
            RecomputeAndBackpropagateInterleaved="RecomputationMode.Interleaved")))
    return api


def test_sdk_calls_against_the_recording_stand_in(monkeypatch):
    log = []
    monkeypatch.setattr(ipu, "_ipu_api", lambda: recording_ipu(log))
    c = paper_config()
    assert ipu.make_ipu_strategy(c.strategy, "fp16") == "strategy"
    sets = {path: value for kind, path, *rest in log if kind == "set"
            for value in rest[:1]}
    assert sets["IPUConfig.auto_select_ipus"] == 16
    assert sets["IPUConfig.allow_recompute"] is True
    assert sets["IPUConfig.floating_point_behaviour.esr"] == "ESR.ON"
    assert sets["IPUConfig.floating_point_behaviour.oflo"] is False
    calls = [entry[1] for entry in log if entry[0] == "call"]
    assert calls == ["IPUConfig.configure_ipu_system", "IPUStrategy"]

    model = models.EfficientNet("b0", group_size=16, input_shape=(32, 32, 3))
    recorded = {}

    class Assignment:
        def __init__(self, layer):
            self.layer, self.pipeline_stage = layer, None
    model.get_pipeline_stage_assignment = lambda: [Assignment(l) for l in model.layers[1:]]
    model.set_pipeline_stage_assignment = lambda a: recorded.setdefault("stages", a)
    model.set_pipelining_options = lambda **kw: recorded.setdefault("pipelining", kw)
    assert ipu.prepare_model(model, c, steps_per_epoch=100) == 300
    stages = {a.layer.name: a.pipeline_stage for a in recorded["stages"]}
    assert stages["stem_conv"] == 0 and stages["block3a"] == 0
    assert stages["block3b"] == 1 and stages["predictions"] == 1
    assert stages == {k: v for k, v in pipeline.stage_assignment(model, ("block3b",))
                      if k in stages}
    assert recorded["pipelining"] == dict(
        gradient_accumulation_steps_per_replica=6,
        pipeline_schedule="PipelineSchedule.Grouped",
        recomputation_mode="RecomputationMode.Interleaved")
    validation = {}
    model.set_pipelining_options = lambda **kw: validation.update(kw)
    ipu.prepare_validation_model(model, c)
    assert validation == dict(device_mapping=[0, 0])


def test_without_the_sdk_the_ipu_strategy_says_what_is_missing():
    c = paper_config()
    with pytest.raises(RuntimeError, match="Poplar SDK"):
        ipu.make_ipu_strategy(c.strategy, "fp16")
