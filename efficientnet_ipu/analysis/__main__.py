"""The analysis commands.

    python -m efficientnet_ipu.analysis --table2 [--sizes=b0,b2]
        paper 001 Table 2 beside our parameter and MAC counts;
    python -m efficientnet_ipu.analysis --random-nets --images=../shared/data/cifar10_jpg/test \
        --out=results/analysis
        paper 002 Figure 2 (top row) from random nets of Definition 1 on real images:
        random_nets.png, random_nets.csv, a table, and the check of Theorem 1 for LN;
    python -m efficientnet_ipu.analysis --power --workdir=/tmp/efficientnet_demo
        power plots of a trained model at initialization and at every saved epoch, on the
        last 256 training images (paper 002 Appendix A.2.2): <workdir>/analysis/power.png
        and power.csv;
    python -m efficientnet_ipu.analysis --signal --workdir=/tmp/efficientnet_demo
        signal propagation plots (paper 003) of the same weights:
        <workdir>/analysis/signal_propagation.png and .csv, and TensorBoard scalars in
        <workdir>/tensorboard/signal.

The epochs are the per-epoch weights (``config.average.keep_epoch_weights``, the demo's
default) or, without them, the training checkpoints kept (labelled by step).
"""
import argparse
import csv
import glob
import os
import sys

import numpy as np
import tensorflow as tf

from efficientnet_ipu import average as average_lib
from efficientnet_ipu import config as config_lib
from efficientnet_ipu import data, train
from efficientnet_ipu import workdir as workdir_lib
from efficientnet_ipu.analysis import costs, figures, power, signal
from efficientnet_ipu.layers import GROUP_RULES


def folder_images(folder, count, size=32):
    """``count`` JPEGs spread evenly over the sorted files of an image folder
    (<folder>/<class>/<image>.jpg), resized to size x size and standardized per colour
    channel: float32 [count, size, size, 3].

    Raises: ValueError if the folder holds fewer than ``count`` JPEGs."""
    paths = sorted(glob.glob(os.path.join(folder, "*", "*.jp*g")))
    if len(paths) < count:
        raise ValueError("--images=%s holds %d JPEGs in class folders, fewer than the %d "
                         "needed" % (folder, len(paths), count))
    paths = [paths[i * len(paths) // count] for i in range(count)]
    images = np.stack([tf.image.resize(tf.cast(tf.io.decode_jpeg(tf.io.read_file(p),
                                                                channels=3), tf.float32),
                                       (size, size)).numpy() for p in paths])
    return (images - images.mean((0, 1, 2))) / images.std((0, 1, 2))


def random_nets(images, depth, width, groups, seed, out):
    """Run every norm of ``power.RANDOM_NET_NORMS``; write the figure and the CSV under
    ``out``, print the table and Theorem 1's check. Returns {norm: rows}."""
    results = {norm: power.random_net(images, norm, depth=depth, width=width,
                                      groups=groups, seed=seed)
               for norm in power.RANDOM_NET_NORMS}
    os.makedirs(out, exist_ok=True)
    figures.plot_random_nets(results, os.path.join(out, "random_nets.png"))
    with open(os.path.join(out, "random_nets.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["norm", "depth"] + list(power.TERMS))
        for norm, rows in results.items():
            for r in rows:
                writer.writerow([norm, r["depth"]] + ["%.6f" % r["fractions"][t]
                                                      for t in power.TERMS])
    print("Fraction of the power at the dataset scale (channel-wise collapse) / share of "
          "the rest that varies between inputs, by depth:")
    print("%6s " % "depth" + " ".join("%17s" % n for n in results))
    for d in sorted({1, 2, 5, 10, 20, 30, 50, depth} & set(range(1, depth + 1))):
        cells = []
        for rows in results.values():
            f = rows[d - 1]["fractions"]
            rest = max(1.0 - f["channel_mean_sq"], 1e-12)
            cells.append("%8.3f / %6.3f" % (f["channel_mean_sq"], (
                f["instance_mean_var"] + f["instance_std_var"]) / rest))
        print("%6d " % d + " ".join("%17s" % c for c in cells))
    rest = [1.0 - r["fractions"]["channel_mean_sq"] for r in results["ln"]]
    bound = [power.theorem1_bound(d) * rest[0] for d in range(1, depth + 1)]
    broken = [d + 1 for d in range(depth) if rest[d] > bound[d] + 1e-3]
    print("Theorem 1 (LN): 1 - dataset-scale fraction <= rho^(l-1) x its value at layer 1, "
          "rho = %.4f: %s" % (power.theorem1_bound(2),
                              "holds at every depth" if not broken
                              else "exceeded at depths %s" % broken))
    return results


def epoch_weights(workdir):
    """[(label, unit, weights path)] of a training workdir: per-epoch weights (unit
    "epoch") or else its training checkpoints (unit "step")."""
    found = [(e, "epoch", p) for e, p in average_lib.epoch_checkpoints(workdir)]
    if found:
        return found
    state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
    paths = list(state.all_model_checkpoint_paths) if state else []
    return [(int(p.rsplit("-", 1)[-1]), "step", p) for p in paths]


def training_images(workdir, count=256):
    """The last ``count`` training images of the workdir's dataset, with evaluation
    preprocessing at the training size: (float32 [n, S, S, 3], int64 [n])."""
    config = config_lib.load_workdir_config(workdir)
    source = data.open_source(config.dataset)
    n = data.num_train_examples(source, config)
    size = config.image_size.train
    ds = source.train(False).take(n).skip(max(n - count, 0))
    ds = data.map_images(ds, lambda image: data.eval_preprocess(image, size), size,
                         source.bad_images, config.dataset.train_split).batch(count)
    images, labels = next(iter(ds))
    return images.numpy(), labels.numpy()


def workdir_title(workdir, count):
    """A figure title naming the workdir's model and data, e.g. "B0-G16-ln_pn on digits,
    256 training images"."""
    c = config_lib.load_workdir_config(workdir)
    return "%s-G%d-%s on %s, %d training images" % (
        c.model.size.upper(), c.model.group_size, c.model.norm, c.dataset.name, count)


def workdir_models(workdir):
    """Yield (label, unit, model) for the workdir's initialization (label 0, the run's
    seed) and each of ``epoch_weights``. The analyses run in inference mode, so BN uses
    its moving statistics; a BN model's initialization is left out, its moving
    statistics being those of no data. Raises FileNotFoundError without any weights."""
    weights = epoch_weights(workdir)
    if not weights:
        raise FileNotFoundError("no per-epoch weights (%s) and no checkpoint in %s"
                                % (os.path.join(workdir, average_lib.EPOCHS_DIR), workdir))
    unit = weights[0][1]
    config = config_lib.load_workdir_config(workdir)
    train.set_seed(config.seed)
    model = workdir_lib.build_model(workdir)
    if not config.model.norm.startswith("bn"):
        yield 0, unit, model
    for label, unit, path in weights:
        yield label, unit, workdir_lib.read_weights(
            model, workdir_lib.Weights("last", path, "%s %d" % (unit, label), None, None))


def power_plots(workdir, count):
    """Power plots of every saved epoch of ``workdir``: analysis/power.png and .csv."""
    images, _ = training_images(workdir, count)
    out = os.path.join(workdir, "analysis")
    os.makedirs(out, exist_ok=True)
    by_label, unit = {}, "epoch"
    with open(os.path.join(out, "power.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["unit", "label", "layer", "norm"] + list(power.TERMS))
        for label, unit, model in workdir_models(workdir):
            rows = power.power_decomposition(model, images)
            by_label[label] = rows
            for r in rows:
                writer.writerow([unit, label, r["layer"], r["norm"]]
                                + ["%.6f" % r["fractions"][t] for t in power.TERMS])
            last = rows[-1]["fractions"]
            print("%s %d: %d normalized steps; last (%s) at the dataset scale %.3f"
                  % (unit, label, len(rows), rows[-1]["layer"], last["channel_mean_sq"]))
    figures.plot_power_epochs(by_label, os.path.join(out, "power.png"),
                              title=workdir_title(workdir, len(images)))
    return os.path.join(out, "power.png")


def signal_plots(workdir, count):
    """Signal propagation plots of every saved epoch of ``workdir``."""
    images, labels = training_images(workdir, count)
    out = os.path.join(workdir, "analysis")
    csv_path = os.path.join(out, "signal_propagation.csv")
    if os.path.exists(csv_path):
        os.remove(csv_path)
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard", "signal"))
    rows = []
    for label, unit, model in workdir_models(workdir):
        part = signal.signal_propagation(model, images, labels, epoch=label)
        signal.append_csv(part, csv_path)
        signal.write_summaries(part, writer, label)
        rows += part
        acts = [r for r in part if r["kind"] == "activations"]
        print("%s %d: activations at the top: avg channel squared mean %.4g, variance %.4g"
              % (unit, label, acts[-1]["channel_sq_mean"], acts[-1]["channel_var"]))
    png = os.path.join(out, "signal_propagation.png")
    figures.plot_signal(rows, png, title=workdir_title(workdir, len(images)))
    return png


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--table2", action="store_true",
                      help="print paper 001 Table 2 beside our parameter and MAC counts")
    what.add_argument("--random-nets", action="store_true",
                      help="paper 002 Figure 2 (top row) from random nets")
    what.add_argument("--power", action="store_true", help="power plots of a workdir")
    what.add_argument("--signal", action="store_true",
                      help="signal propagation plots of a workdir")
    parser.add_argument("--sizes", default="", help="--table2: comma-separated subset")
    parser.add_argument("--group_rule", default="graphcore", choices=GROUP_RULES,
                        help="--table2: groups where G does not divide the channels")
    parser.add_argument("--images", default="",
                        help="--random-nets: image folder (<class>/<image>.jpg)")
    parser.add_argument("--batch", type=int, default=128, help="--random-nets: inputs")
    parser.add_argument("--depth", type=int, default=50, help="--random-nets: layers")
    parser.add_argument("--width", type=int, default=128, help="--random-nets: channels")
    parser.add_argument("--groups", type=int, default=8, help="--random-nets: GN groups")
    parser.add_argument("--seed", type=int, default=0, help="--random-nets: seed")
    parser.add_argument("--out", default="results/analysis",
                        help="--random-nets: output folder")
    parser.add_argument("--workdir", default="", help="--power, --signal: training workdir")
    parser.add_argument("--count", type=int, default=256,
                        help="--power, --signal: last training images used")
    args = parser.parse_args(argv)
    if args.table2:
        sizes = [s for s in args.sizes.split(",") if s]
        for size in sizes:
            costs.models.check_size(size)
        costs.print_table2(sizes, args.group_rule)
        return 0
    if args.random_nets:
        if not os.path.isdir(args.images):
            parser.error("--random-nets needs --images=<folder of class folders of JPEGs>, "
                         "e.g. ../shared/data/cifar10_jpg/test; got %r" % args.images)
        for field in ("batch", "depth", "width", "groups"):
            if getattr(args, field) < 1:
                parser.error("--%s must be >= 1, got %d" % (field, getattr(args, field)))
        random_nets(folder_images(args.images, args.batch), args.depth, args.width,
                    args.groups, args.seed, args.out)
        print("wrote %s" % os.path.join(args.out, "random_nets.png"))
        return 0
    if args.power or args.signal:
        if not os.path.exists(os.path.join(args.workdir, "model.json")):
            parser.error("--workdir=%r is not a training workdir (no model.json)"
                         % args.workdir)
        if args.count < 2:
            parser.error("--count must be >= 2, got %d" % args.count)
        png = (power_plots if args.power else signal_plots)(args.workdir, args.count)
        print("wrote %s" % png)
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
