"""Pipeline stages (pipeline.py, paper 001 sec. 3.4): Graphcore's split points for the
paper's runs and the automatic balancing, on the real models."""
import numpy as np
import pytest

from efficientnet_ipu import models, pipeline

FAST = ["b0", "b2"]
SLOW = ["b1", "b3", "b4", "b5"]


def configs(sizes):
    return [pytest.param(size, g, marks=[pytest.mark.slow] if size in SLOW else [])
            for size in sizes for g in (1, 16)]


def check_stages(model, assignment, splits):
    names = [layer.name for layer in model.layers]
    assert [name for name, _ in assignment] == names
    stages = [stage for _, stage in assignment]
    assert stages == sorted(stages)                            # contiguous
    assert set(stages) == set(range(len(splits) + 1))          # none empty
    for k, split in enumerate(splits, start=1):                # each starts at its block
        assert stages[names.index(split)] == k and stages[names.index(split) - 1] == k - 1
    assert stages[names.index("stem_conv")] == 0
    assert stages[-1] == len(splits) and dict(assignment)["top_conv"] == len(splits)


@pytest.mark.parametrize("size,group_size", configs(FAST + SLOW))
def test_paper_and_balanced_stages_are_contiguous_and_balanced(size, group_size):
    """Every paper configuration: the paper's splits where Graphcore published them, and
    4 stages balanced by multiply-adds, each within 30 % of the mean stage."""
    model = models.EfficientNet(size, group_size=group_size)
    paper = pipeline.PAPER_SPLITS.get((size, group_size))
    if paper:
        check_stages(model, pipeline.stage_assignment(model, paper), paper)
    costs = pipeline.layer_costs(model, models.SIZES[size][2], "macs")
    splits = pipeline.balanced_splits(model, 4, costs)
    assignment = pipeline.stage_assignment(model, splits)
    check_stages(model, assignment, splits)
    shares = np.array(pipeline.stage_shares(assignment, costs))
    assert shares.sum() == pytest.approx(1.0)
    assert np.all(np.abs(shares / shares.mean() - 1.0) <= 0.3), shares


def test_balancing_is_optimal_and_reports_each_stage():
    """The dynamic programme's largest stage is the smallest over every 2-stage cut, for
    each cost, and the report names each stage's layers and share."""
    model = models.EfficientNet("b0", group_size=16)
    blocks = pipeline.block_names(model)
    for cost in pipeline.COSTS:
        costs = pipeline.layer_costs(model, 224, cost)
        best = min(max(pipeline.stage_shares(pipeline.stage_assignment(model, (b,)), costs))
                   for b in blocks[1:])
        splits = pipeline.balanced_splits(model, 2, costs)
        got = max(pipeline.stage_shares(pipeline.stage_assignment(model, splits), costs))
        assert got == pytest.approx(best), cost
    lines = pipeline.report(pipeline.stage_assignment(model, ("block3b",)),
                            pipeline.layer_costs(model, 224, "macs"), "macs")
    assert lines[0].startswith("stage 1: images .. block3a") and "% of macs" in lines[0]
    assert lines[1].startswith("stage 2: block3b .. ")


def test_bad_splits_and_stage_counts_are_refused():
    model = models.EfficientNet("b0", group_size=16)
    with pytest.raises(ValueError, match="not blocks of"):
        pipeline.stage_assignment(model, ("block9z",))
    with pytest.raises(ValueError, match="model order"):
        pipeline.stage_assignment(model, ("block4a", "block3a"))
    with pytest.raises(ValueError, match="first block"):
        pipeline.stage_assignment(model, ("block1a",))
    with pytest.raises(ValueError, match="from 1 to 16"):
        pipeline.balanced_splits(model, 17, {})
    with pytest.raises(ValueError, match="cost must be one of"):
        pipeline.layer_costs(model, 224, "flops")
    with pytest.raises(ValueError, match="no paper pipeline splits"):
        pipeline.splits_for("b1", 1, model)
    assert pipeline.splits_for("b0", 16, model) == ("block3b",)
