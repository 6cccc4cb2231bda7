"""Top-1 / top-5 evaluation, and the sweep over test sizes (paper 001 sec. 3.3, Figure 3).

    python -m efficientnet_ipu.evaluate --workdir=runs/b0 --image_sizes=64:224:32 \
        [--weights=all|last,averaged,finetuned] [--eval_steps=N]

evaluates each of the workdir's weights (``efficientnet_ipu.workdir``: the last checkpoint,
the averaged weights, every fine-tune) at each test size with the evaluation preprocessing
(short side to size x 256 / 224, centre crop), and writes into ``<workdir>/sweep/``:

- ``sweep.csv``: one row per (weights, test size): top-1 and top-5 in [0, 1] and the number
  of images. A row already there is kept, so a killed sweep resumes where it stopped.
- ``sweep.png``: top-1 against test size, one line per weights, like paper 001 Figure 3.

It prints each weights' best size. A size that breaks the mod-32 rule (the test size should
equal the training size mod 32, ``resolution.check_test_size``) is evaluated with a
warning naming both sizes.
"""
import csv
import os
import sys

import tensorflow as tf

SWEEP_DIR = "sweep"
COLUMNS = ("weights", "kind", "blocks", "weights_size", "train_size", "image_size", "top1",
           "top5", "examples")


def top_k_hits(logits, labels, k=5):
    """Hits of one batch: (top-1 hits, top-k hits, examples), float32 scalars.

    ``logits`` [N, K] (any float dtype), ``labels`` int [N]; k is capped at K."""
    top = tf.math.top_k(tf.cast(logits, tf.float32), k=min(k, int(logits.shape[-1]))).indices
    hits = tf.equal(top, tf.cast(labels, top.dtype)[:, None])
    return (tf.reduce_sum(tf.cast(hits[:, 0], tf.float32)),
            tf.reduce_sum(tf.cast(tf.reduce_any(hits, -1), tf.float32)),
            tf.cast(tf.shape(labels)[0], tf.float32))


class Evaluator:
    """Top-1 and top-5 accuracy of a model over a dataset, under a distribution strategy.

    Args:
      model: keras.Model, images [N, S, S, 3] -> logits [N, K].
      strategy: a tf.distribute strategy (None: the default one).

    Calling it on a dataset of (images float32 [B, S, S, 3], labels int [B]) returns
    {"top1": float in [0, 1], "top5": ..., "examples": int}. The step is traced once per
    image size.
    """

    def __init__(self, model, strategy=None):
        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        self._step = tf.function(self._distributed_step, reduce_retracing=True)

    def _replica_step(self, images, labels):
        return top_k_hits(self.model(images, training=False), labels)

    def _distributed_step(self, images, labels):
        out = self.strategy.run(self._replica_step, args=(images, labels))
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, o, None) for o in out]

    def __call__(self, dataset):
        top1 = top5 = count = 0.0
        for images, labels in self.strategy.experimental_distribute_dataset(dataset):
            a, b, n = self._step(images, labels)
            top1, top5, count = top1 + float(a), top5 + float(b), count + float(n)
        return {"top1": top1 / max(count, 1.0), "top5": top5 / max(count, 1.0),
                "examples": int(count)}


def read_rows(path):
    """The rows of a sweep CSV (strings), [] if the file does not exist."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sweep_weights(workdir, kinds, strict):
    """The ``workdir.Weights`` to sweep for ``kinds`` (a list of "last", "averaged",
    "finetuned"; "finetuned" stands for every finished fine-tune). ``strict``: a kind the
    workdir lacks is an error (FileNotFoundError), else it is left out."""
    from efficientnet_ipu import workdir as workdir_lib
    found = []
    for kind in kinds:
        if kind == "finetuned":
            tunes = workdir_lib.finetuned_weights(workdir)
            if not tunes and strict:
                raise FileNotFoundError("no finished fine-tune in %s" % os.path.join(
                    workdir, workdir_lib.FINETUNE_DIR))
            found += tunes
            continue
        try:
            found.append(workdir_lib.find_weights(workdir, kind))
        except FileNotFoundError:
            if strict:
                raise
    return found


def sweep(workdir, image_sizes, kinds=("last", "averaged", "finetuned"), strict=False,
          eval_steps=None, out_dir=None, source=None):
    """Evaluate weights of a workdir at each test size (see the module docstring).

    Args:
      workdir: a training workdir.
      image_sizes: test sizes in pixels.
      kinds: which weights ("last", "averaged", "finetuned").
      strict: a kind the workdir lacks is an error, instead of being left out.
      eval_steps: evaluation batches per size (None: the config's ``train.eval_steps``,
        0 = the whole split).
      out_dir: where sweep.csv and sweep.png go (default ``<workdir>/sweep``).
      source: a ``data.Source`` (default: the config's dataset).

    Returns: the CSV's rows (dicts of strings), those of earlier runs included.

    Raises: ValueError for no sizes or no weights; FileNotFoundError as ``sweep_weights``.
    """
    from efficientnet_ipu import config as config_lib, data, resolution, train
    from efficientnet_ipu import workdir as workdir_lib
    sizes = sorted(set(int(s) for s in image_sizes))
    if not sizes or min(sizes) < 1:
        raise ValueError("image_sizes must be positive pixel sizes, got %r" % (image_sizes,))
    config = config_lib.load_workdir_config(workdir)
    if eval_steps is not None:
        config.train.eval_steps = int(eval_steps)
    weights = sweep_weights(workdir, kinds, strict)
    if not weights:
        raise ValueError("none of the weights %s is in %s" % (list(kinds), workdir))
    out_dir = out_dir or os.path.join(workdir, SWEEP_DIR)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "sweep.csv")
    rows = read_rows(path)
    done = {(r["weights"], int(r["image_size"])) for r in rows}
    todo = [(w, s) for w in weights for s in sizes if (w.label, s) not in done]
    train_size = config.image_size.train
    if todo:
        source = source or data.open_source(config.dataset)
        train.set_precision(config.train.precision)
        model = workdir_lib.build_model(workdir)
        evaluator = Evaluator(model)
        loaded = None
        new_file = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new_file:
                writer.writeheader()
            for w, size in todo:
                if loaded != w.label:
                    workdir_lib.read_weights(model, w)
                    loaded = w.label
                resolution.check_test_size(train_size, size)
                config.image_size.eval = size
                metrics = evaluator(data.eval_dataset(source, config,
                                                      config.train.micro_batch_size))
                row = dict(weights=w.label, kind=w.kind, blocks=w.blocks or "",
                           weights_size=w.image_size, train_size=train_size, image_size=size,
                           top1="%.5f" % metrics["top1"], top5="%.5f" % metrics["top5"],
                           examples=metrics["examples"])
                writer.writerow(row)
                f.flush()
                print("%-22s %4d px  top-1 %.4f  top-5 %.4f  (%d images)" % (
                    w.label, size, metrics["top1"], metrics["top5"], metrics["examples"]),
                    flush=True)
        rows = read_rows(path)
    plot_sweep(rows, os.path.join(out_dir, "sweep.png"), train_size)
    for label, (size, top1) in sorted(best_sizes(rows).items()):
        print("best test size for %s: %d px (top-1 %.4f)" % (label, size, top1), flush=True)
    return rows


def best_sizes(rows):
    """{weights label: (best test size, its top-1)} over a sweep's rows (ties: the smaller
    size)."""
    best = {}
    for r in rows:
        size, top1 = int(r["image_size"]), float(r["top1"])
        current = best.get(r["weights"])
        if current is None or top1 > current[1] or (top1 == current[1] and size < current[0]):
            best[r["weights"]] = (size, top1)
    return best


def plot_sweep(rows, out, train_size=None):
    """A PNG of top-1 (%) against test size, one line per weights, the training size as a
    dashed line (paper 001 Figure 3). Raises ValueError for no rows."""
    if not rows:
        raise ValueError("no sweep rows to plot")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lines = {}
    for r in rows:
        lines.setdefault(r["weights"], []).append((int(r["image_size"]),
                                                   100 * float(r["top1"])))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, points in sorted(lines.items()):
        points.sort()
        ax.plot(*zip(*points), "o-", label=label)
    if train_size:
        ax.axvline(train_size, color="gray", linestyle="--", linewidth=1,
                   label="training size")
    ax.set_xlabel("Test image size (px)")
    ax.set_ylabel("Top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None):
    import argparse
    from efficientnet_ipu import config as config_lib
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--image_sizes", required=True,
                        help="test sizes: '128,160,192' or 'low:high:step' (pixels)")
    parser.add_argument("--weights", default="all",
                        help="'all' or a comma list of last, averaged, finetuned")
    parser.add_argument("--eval_steps", type=int, default=None,
                        help="evaluation batches per size (default: the config's; 0 = all)")
    parser.add_argument("--out", default=None, help="output folder (default WORKDIR/sweep)")
    args = parser.parse_args(argv)
    try:
        sizes = config_lib.parse_sizes(args.image_sizes)
        kinds = config_lib.parse_weights(args.weights)
    except ValueError as error:
        parser.error(str(error))
    if args.eval_steps is not None and args.eval_steps < 0:
        parser.error("--eval_steps must be >= 0 (0 = the whole split), got %d"
                     % args.eval_steps)
    if not os.path.exists(os.path.join(args.workdir, "config.json")):
        parser.error("%s holds no config.json: --workdir must be a training workdir"
                     % args.workdir)
    from efficientnet_ipu import data, workdir as workdir_lib
    source = data.open_source(config_lib.load_workdir_config(args.workdir).dataset)
    try:
        with workdir_lib.WorkdirLock(args.workdir, "efficientnet_ipu.evaluate"), \
                data.bad_image_errors(source):
            sweep(args.workdir, sizes, kinds, strict=args.weights != "all",
                  eval_steps=args.eval_steps, out_dir=args.out, source=source)
    except (workdir_lib.WorkdirInUseError, data.BadImageError) as error:
        print("error: %s" % error, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
