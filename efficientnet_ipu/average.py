"""Final weights: an exponential average of the per-epoch weights (paper 001 sec. 3.4).

Graphcore's rule, after each epoch's checkpoint: V <- d V + (1 - d) W_epoch, starting from
the first epoch's weights (V = W_1); d = 0.97 in the paper. Every floating-point weight of
the model is averaged, BN's moving statistics included.

Training keeps the average as it goes (``WeightAverage``, saved in the checkpoints, so a
resumed run continues it exactly). This command recomputes it from a workdir's per-epoch
weights (``config.average.keep_epoch_weights``) with any decay, and writes it where
evaluation, fine-tuning and export can start from:

    python -m efficientnet_ipu.average --workdir=runs/b0 --decay=0.97

It writes ``<workdir>/averaged-<decay>/`` (a weights-only checkpoint of the model) and prints
the epochs it averaged.
"""
import contextlib
import glob
import os
import re

import tensorflow as tf

DEFAULT_DECAY = 0.97
EPOCHS_DIR = "epochs"            # <workdir>/epochs/epoch-0001 ... (weights only)
AVERAGED_DIR = "averaged"        # <workdir>/averaged/ : the training's own average


def averaged_weights(model):
    """The model's weights the average covers: every floating-point variable (trainable
    weights and moving statistics), in ``model.weights`` order."""
    return [w for w in model.weights if tf.as_dtype(w.dtype).is_floating]


class WeightAverage(tf.Module):
    """The running average V of a model's weights, one float32 copy per weight.

    Args:
      model: a built keras.Model.
      decay: d in [0, 1).

    Raises: ValueError for a decay outside [0, 1).
    """

    def __init__(self, model, decay=DEFAULT_DECAY):
        super().__init__(name="weight_average")
        if not 0 <= decay < 1:
            raise ValueError("the average's decay must be in [0, 1), got %r" % (decay,))
        self.decay = float(decay)
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_averaged")
        self.values = [tf.Variable(tf.zeros(w.shape, tf.float32), trainable=False,
                                   name="average_%d" % i)
                       for i, w in enumerate(averaged_weights(model))]

    def update(self, weights):
        """V = W at the first update, then V = d V + (1 - d) W; ``weights``: the model's
        ``averaged_weights`` (variables or arrays, in that order)."""
        first = int(self.count) == 0
        for v, w in zip(self.values, weights):
            w = tf.cast(tf.convert_to_tensor(w), tf.float32)
            v.assign(w if first else self.decay * v + (1.0 - self.decay) * w)
        self.count.assign_add(1)

    @contextlib.contextmanager
    def swapped_into(self, model):
        """Within the block the model holds the averaged weights; its own come back after.

        Raises: RuntimeError if nothing has been averaged yet."""
        if int(self.count) == 0:
            raise RuntimeError("no epoch has been averaged yet")
        weights = averaged_weights(model)
        saved = [tf.identity(w) for w in weights]
        for w, v in zip(weights, self.values):
            w.assign(tf.cast(v, w.dtype))
        try:
            yield model
        finally:
            for w, s in zip(weights, saved):
                w.assign(s)


def epoch_checkpoints(workdir):
    """[(epoch, path prefix)] of the per-epoch weights in ``workdir``, by epoch."""
    found = []
    for index in glob.glob(os.path.join(workdir, EPOCHS_DIR, "epoch-*.index")):
        match = re.search(r"epoch-(\d+)\.index$", index)
        if match:
            found.append((int(match.group(1)), index[:-len(".index")]))
    return sorted(found)


def save_epoch_weights(model, workdir, epoch):
    """Write the model's weights (no optimizer state) as ``<workdir>/epochs/epoch-NNNN``."""
    path = os.path.join(workdir, EPOCHS_DIR, "epoch-%04d" % epoch)
    tf.train.Checkpoint(model=model).write(path)
    return path


def save_weights(model, path):
    """A weights-only checkpoint of ``model`` at ``path`` (a folder): ``path/weights``."""
    os.makedirs(path, exist_ok=True)
    return tf.train.Checkpoint(model=model).write(os.path.join(path, "weights"))


def average_epochs(model, workdir, decay=DEFAULT_DECAY):
    """The average of a workdir's per-epoch weights with ``decay``, left in ``model``.

    Returns: the epochs averaged, in order.
    Raises: FileNotFoundError naming the folder if it holds no per-epoch weights.
    """
    checkpoints = epoch_checkpoints(workdir)
    if not checkpoints:
        raise FileNotFoundError(
            "no per-epoch weights in %s (train with config.average.keep_epoch_weights=True)"
            % os.path.join(workdir, EPOCHS_DIR))
    average = WeightAverage(model, decay)
    for _, path in checkpoints:
        tf.train.Checkpoint(model=model).read(path).assert_existing_objects_matched()
        average.update(averaged_weights(model))
    for w, v in zip(averaged_weights(model), average.values):
        w.assign(tf.cast(v, w.dtype))
    return [epoch for epoch, _ in checkpoints]


def main(argv=None):
    import argparse
    import json
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--decay", type=float, default=DEFAULT_DECAY)
    args = parser.parse_args(argv)
    if not 0 <= args.decay < 1:
        parser.error("--decay must be in [0, 1), got %r" % args.decay)
    spec = os.path.join(args.workdir, "model.json")
    if not os.path.exists(spec):
        parser.error("%s is missing: --workdir must be a training workdir" % spec)
    from efficientnet_ipu import models
    with open(spec) as f:
        model = models.EfficientNet(**json.load(f))
    epochs = average_epochs(model, args.workdir, args.decay)
    out = os.path.join(args.workdir, "%s-%g" % (AVERAGED_DIR, args.decay))
    save_weights(model, out)
    print("Averaged epochs %d-%d (%d) with decay %g into %s"
          % (epochs[0], epochs[-1], len(epochs), args.decay, out))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
