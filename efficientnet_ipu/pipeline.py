"""Pipeline stages: which layers of a model run on which device of a pipeline (paper 001
sec. 3.4: pipelined model parallelism over IPUs, the model cut at named blocks).

Plain Python over a built Keras model; no IPU SDK. ``efficientnet_ipu.ipu`` applies the
assignment with ``model.set_pipeline_stage_assignment`` on IPUs.

- ``PAPER_SPLITS``: the split points of Graphcore's 16-IPU runs of the paper (the named
  block starts the new stage; ``../shared/papers/README.md`` lists where they come from).
- ``stage_assignment(model, splits)``: each top-level layer's stage. Layers outside the
  MBConv blocks go with their neighbours: the input, standardization and stem with the
  first block's stage, the top convolution, pooling and classifier with the last.
- ``balanced_splits(model, stages, cost)``: split points chosen by a cost per layer
  (multiply-adds, parameters or activation memory) so that the most loaded stage is as
  light as it can be (contiguous partition of the blocks, exact by dynamic programming).
- ``stage_shares``: each stage's share of a cost.
"""
import numpy as np

COSTS = ("macs", "params", "activations")

# (size, group size) -> the blocks that start stages 2, 3, ... (native resolution).
PAPER_SPLITS = {
    ("b0", 1): ("block3b",), ("b0", 16): ("block3b",),
    ("b1", 16): ("block4b",),
    ("b2", 1): ("block2b", "block4a", "block5d"), ("b2", 16): ("block2b", "block4a", "block5d"),
    ("b3", 16): ("block2b", "block4b", "block5e"),
    ("b4", 1): ("block2b", "block4b", "block6c"), ("b4", 16): ("block2c", "block4c", "block6a"),
    ("b5", 16): ("block2e", "block4f", "block6e"),
}


def block_names(model):
    """Names of the model's MBConv blocks, in order (``block1a``, ``block1b``, ...)."""
    from efficientnet_ipu import layers as L
    return [layer.name for layer in model.layers if isinstance(layer, L.MBConvBlock)]


def check_splits(model, splits):
    """Raise ValueError unless ``splits`` names distinct MBConv blocks of ``model`` in
    model order, none of them the first block (which would leave stage 1 empty)."""
    names = block_names(model)
    unknown = [s for s in splits if s not in names]
    if unknown:
        raise ValueError("pipeline splits %s are not blocks of %s; its blocks are %s"
                         % (unknown, model.name, names))
    positions = [names.index(s) for s in splits]
    if positions != sorted(set(positions)):
        raise ValueError("pipeline splits must be distinct blocks in model order, got %s"
                         % (list(splits),))
    if positions and positions[0] == 0:
        raise ValueError("pipeline split %r is the first block: stage 1 would hold only "
                         "the stem" % (splits[0],))


def stage_assignment(model, splits):
    """The pipeline stage of every top-level layer of ``model``.

    Args:
      model: a functional model of this project (``models.EfficientNet``).
      splits: names of the MBConv blocks that start stages 2, 3, ... (e.g.
        ``PAPER_SPLITS[("b0", 16)]``); empty for one stage.

    Returns: list of (layer name, stage index from 0), in ``model.layers`` order; stages
      are contiguous and non-decreasing.

    Raises: ValueError from ``check_splits``.
    """
    check_splits(model, splits)
    stage, assignment = 0, []
    for layer in model.layers:
        if stage < len(splits) and layer.name == splits[stage]:
            stage += 1
        assignment.append((layer.name, stage))
    return assignment


def layer_costs(model, image_size, cost="macs"):
    """A cost per top-level layer of ``model`` at ``image_size`` (per image):

    - "macs": multiply-adds (``analysis.costs.layer_macs``);
    - "params": the layer's weights (all of them, as they occupy memory);
    - "activations": the elements of its output (the activation memory a stage keeps
      per micro-batch image without recomputation).

    Returns: dict {layer name: float}. Raises: ValueError for an unknown ``cost``."""
    if cost not in COSTS:
        raise ValueError("pipeline cost must be one of %s, got %r" % (list(COSTS), cost))
    if cost == "macs":
        from efficientnet_ipu.analysis.costs import layer_macs
        return {k: float(v) for k, v in layer_macs(model, image_size).items()}
    if cost == "params":
        return {layer.name: float(sum(np.prod(w.shape) for w in layer.weights))
                for layer in model.layers}
    from tensorflow import keras
    import tensorflow as tf
    probe = keras.Model(model.inputs, [layer.output for layer in model.layers])
    outputs = probe(tf.zeros([1, image_size, image_size, 3]), training=False)
    return {layer.name: float(np.prod(out.shape[1:]))
            for layer, out in zip(model.layers, outputs)}


def stage_shares(assignment, costs):
    """Each stage's share of the total cost: list of floats summing to 1, by stage.
    ``assignment``: ``stage_assignment``'s list; ``costs``: ``layer_costs``' dict."""
    stages = max(stage for _, stage in assignment) + 1
    totals = np.zeros(stages)
    for name, stage in assignment:
        totals[stage] += costs.get(name, 0.0)
    return list(totals / totals.sum())


def balanced_splits(model, stages, costs):
    """Split points that minimize the largest stage's cost.

    The blocks are cut into ``stages`` contiguous runs (each at least one block); the
    layers before the first block count with stage 1, the layers after the last block
    with the last stage. Exact: dynamic programming over the block boundaries.

    Args:
      model: a model of this project; stages: int >= 1, at most its number of blocks;
      costs: ``layer_costs``' dict.

    Returns: tuple of the block names that start stages 2..``stages``.

    Raises: ValueError if ``stages`` is not between 1 and the number of blocks.
    """
    names = block_names(model)
    if not isinstance(stages, int) or not 1 <= stages <= len(names):
        raise ValueError("pipeline stages must be an integer from 1 to %d (the blocks of "
                         "%s), got %r" % (len(names), model.name, stages))
    layers = [layer.name for layer in model.layers]
    first, last = layers.index(names[0]), layers.index(names[-1])
    weights = [costs.get(n, 0.0) for n in names]
    weights[0] += sum(costs.get(n, 0.0) for n in layers[:first])
    weights[-1] += sum(costs.get(n, 0.0) for n in layers[last + 1:])
    prefix = np.concatenate([[0.0], np.cumsum(weights)])
    n = len(names)
    # best[k][i]: the smallest possible maximum over k stages covering blocks [0, i).
    best = np.full((stages + 1, n + 1), np.inf)
    cut = np.zeros((stages + 1, n + 1), int)
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    starts, i = [], n
    for k in range(stages, 0, -1):
        i = cut[k][i]
        starts.append(i)
    return tuple(names[i] for i in sorted(starts)[1:])


def splits_for(size, group_size, model, stages=None, costs=None):
    """The split points of a run: ``PAPER_SPLITS`` for the paper's configurations (when
    ``stages`` is None or matches), else ``balanced_splits`` for ``stages`` stages over
    ``costs`` (``layer_costs``' dict, or a function returning it, called only then).
    Raises ValueError if neither applies (no paper splits and no ``stages`` or
    ``costs``)."""
    paper = PAPER_SPLITS.get((size, group_size))
    if paper is not None and stages in (None, len(paper) + 1):
        return paper
    if stages is None or costs is None:
        raise ValueError("no paper pipeline splits for %s-G%d: give the number of stages "
                         "(and a cost) to balance them; paper configurations: %s"
                         % (size, group_size, sorted(PAPER_SPLITS)))
    return balanced_splits(model, stages, costs() if callable(costs) else costs)


def report(assignment, costs, cost_name):
    """One line per stage: its first and last layer and its share of ``cost_name``."""
    shares = stage_shares(assignment, costs)
    lines = []
    for stage, share in enumerate(shares):
        names = [name for name, s in assignment if s == stage]
        lines.append("stage %d: %s .. %s, %.1f %% of %s"
                     % (stage + 1, names[0], names[-1], 100 * share, cost_name))
    return lines
