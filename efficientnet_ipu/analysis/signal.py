"""Signal propagation plots (Brock, De and Smith, 2021, "Characterizing signal
propagation to close the performance gap in unnormalized ResNets", sec. 4; paper 003 draws
them for EfficientNet-B0).

For an activation x [N, H, W, C] the two statistics are averages over channels:

- ``channel_sq_mean``: the average channel squared mean, mean_c (mean_{N,H,W} x_c)^2;
- ``channel_var``: the average channel variance, mean_c Var_{N,H,W}[x_c].

They are taken at the output of the stem, of every MBConv block and of the top
(``signal_points``), in depth order. The same two statistics, with the kernel's last axis
as the channel, are taken of every convolution and dense kernel (``weights``) and of the
loss gradient with respect to it (``gradients``): one row per kernel.

``signal_propagation`` computes one set of rows; ``SignalPropagationCallback`` records them
during ``model.fit`` (TensorBoard and CSV); ``python -m efficientnet_ipu.analysis
--signal --workdir=...`` does it for every saved epoch of a training run, and
``analysis.figures.plot_signal`` draws them.
"""
import csv
import os

from tensorflow import keras
import numpy as np
import tensorflow as tf

from efficientnet_ipu import layers as L

KINDS = ("activations", "weights", "gradients")
STATISTICS = ("channel_sq_mean", "channel_var")
CSV_FIELDS = ("epoch", "kind", "depth", "layer", "channel_sq_mean", "channel_var")


def channel_statistics(x):
    """(average channel squared mean, average channel variance) of x, channels on the last
    axis, statistics over all other axes; floats (float64 arithmetic)."""
    x = tf.cast(tf.reshape(x, [-1, x.shape[-1]]), tf.float64)
    mean = tf.reduce_mean(x, axis=0)
    variance = tf.reduce_mean(tf.square(x - mean), axis=0)
    return float(tf.reduce_mean(tf.square(mean))), float(tf.reduce_mean(variance))


def signal_points(model):
    """The layers whose outputs are measured, in depth order: the stem's norm-activation,
    every MBConv block, the top's norm-activation (functional layers of ``model``)."""
    points = [layer for layer in model.layers
              if isinstance(layer, L.MBConvBlock)
              or layer.name in ("stem_norm_act", "top_norm_act")]
    if not points:
        raise ValueError("signal_points: %s has no stem_norm_act, MBConv block or "
                         "top_norm_act layer (not a model of this project?)" % model.name)
    return points


def _kernels(model):
    return [(layer.name, w) for layer in model.layers for w in layer.trainable_weights
            if len(w.shape) >= 2]


def signal_propagation(model, images, labels, epoch=0, batch_size=32):
    """One set of signal propagation rows for ``model`` on a batch of images.

    Args:
      model: a model of this project, float [N, S, S, 3] in [0, 255] -> logits [N, K].
      images: float [N, S, S, 3]; labels: int [N] (the loss of the gradients is the mean
        softmax cross-entropy, computed in inference mode so that BN's moving statistics
        do not change).
      epoch: written into each row.
      batch_size: images per pass; activation statistics pool all images (sums of x and
        x^2 per channel, float64), gradients are of the mean loss over all images.

    Returns: list of dicts with ``CSV_FIELDS``: ``kind`` in ``KINDS``, ``depth`` (0-based
      position in depth order), ``layer`` (name; a weight's variable path for weights and
      gradients).
    """
    points = signal_points(model)
    # One forward pass gives the measured activations and the logits of the loss.
    probe = keras.Model(model.inputs, [p.output for p in points] + list(model.outputs))
    kernels = _kernels(model)
    images = tf.convert_to_tensor(images, tf.float32)
    labels = tf.convert_to_tensor(labels, tf.int64)
    n = int(images.shape[0])
    sums = [None] * len(points)
    grads = [tf.zeros_like(w, tf.float64) for _, w in kernels]
    for start in range(0, n, batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        with tf.GradientTape() as tape:
            outputs = probe(x, training=False)
            logits = tf.cast(outputs[-1], tf.float32)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)) / n
        for i, out in enumerate(outputs[:-1]):
            flat = tf.cast(tf.reshape(out, [-1, out.shape[-1]]), tf.float64)
            part = (tf.reduce_sum(flat, 0), tf.reduce_sum(tf.square(flat), 0),
                    float(flat.shape[0]))
            sums[i] = part if sums[i] is None else tuple(a + b for a, b in zip(sums[i], part))
        for j, g in enumerate(tape.gradient(loss, [w for _, w in kernels])):
            if g is not None:
                grads[j] += tf.cast(tf.convert_to_tensor(g), tf.float64)
    rows = []
    for depth, (point, (s, s2, count)) in enumerate(zip(points, sums)):
        mean = s / count
        variance = tf.maximum(s2 / count - tf.square(mean), 0.0)
        rows.append(dict(epoch=epoch, kind="activations", depth=depth, layer=point.name,
                         channel_sq_mean=float(tf.reduce_mean(tf.square(mean))),
                         channel_var=float(tf.reduce_mean(variance))))
    for depth, ((layer, w), g) in enumerate(zip(kernels, grads)):
        name = getattr(w, "path", None) or w.name
        for kind, value in (("weights", w), ("gradients", g)):
            sq_mean, var = channel_statistics(value)
            rows.append(dict(epoch=epoch, kind=kind, depth=depth, layer=name,
                             channel_sq_mean=sq_mean, channel_var=var))
    return rows


def append_csv(rows, path):
    """Append ``rows`` (``CSV_FIELDS``) to the CSV at ``path``, with a header if new."""
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows({k: r[k] for k in CSV_FIELDS} for r in rows)


def read_csv(path):
    """The rows of a signal propagation CSV, numbers as int / float."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["epoch"], r["depth"] = int(r["epoch"]), int(r["depth"])
        for s in STATISTICS:
            r[s] = float(r[s])
    return rows


def write_summaries(rows, writer, step):
    """Write ``rows`` to a ``tf.summary`` writer at ``step``: one scalar per kind,
    statistic and layer (``signal/<kind>/<statistic>/<depth>_<layer>``)."""
    with writer.as_default(step=step):
        for r in rows:
            for s in STATISTICS:
                tf.summary.scalar("signal/%s/%s/%03d_%s" % (r["kind"], s, r["depth"],
                                                           r["layer"].replace(":", "_")),
                                  r[s])
    writer.flush()


class SignalPropagationCallback(keras.callbacks.Callback):
    """Record signal propagation statistics during ``model.fit`` (Brock et al., 2021;
    paper 003): at the end of every ``every`` epochs (and before training), on fixed
    ``images`` and ``labels``, append ``signal_propagation``'s rows to
    ``<logdir>/signal_propagation.csv`` and write them to TensorBoard under ``logdir``.

    Args:
      images: float [N, S, S, 3] in [0, 255]; labels: int [N].
      logdir: output folder; every: epochs between records (int >= 1).

    Raises: ValueError if ``every`` < 1 or images and labels differ in length.
    """

    def __init__(self, images, labels, logdir, every=1):
        super().__init__()
        if not isinstance(every, int) or every < 1:
            raise ValueError("SignalPropagationCallback every must be an integer >= 1, "
                             "got %r" % (every,))
        if len(images) != len(labels):
            raise ValueError("SignalPropagationCallback got %d images and %d labels"
                             % (len(images), len(labels)))
        self.images, self.labels, self.logdir, self.every = images, labels, logdir, every
        self.csv_path = os.path.join(logdir, "signal_propagation.csv")
        self.writer = None

    def _record(self, epoch):
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(self.logdir)
        rows = signal_propagation(self.model, self.images, self.labels, epoch=epoch)
        append_csv(rows, self.csv_path)
        write_summaries(rows, self.writer, epoch)

    def on_train_begin(self, logs=None):
        self._record(0)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self._record(epoch + 1)
