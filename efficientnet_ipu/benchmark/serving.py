"""The served SavedModel's speed (paper 001 sec. 4 and Figure 6: latency at batch 1,
throughput at a large batch), for this project's exports against keras.applications'
EfficientNet exported the same way.

    python -m efficientnet_ipu.benchmark --serving --sizes=b0 --group-sizes=1,16 \
        --norms=bn,ln_pn --resolutions=native --steps=30

Each model is exported with ``export.export_saved_model`` (keras.applications' through
the same serving function, so both include the resize and centre crop), portable and, where
this project's CPU ops load, with them ("+ops"), loaded back with
``export.load_saved_model``, and its ``serving_default`` signature is called on uint8 images
of side round(S x 256 / 224): batch 1 (latency, ms) and ``batch`` (images/s). All the
models are timed in the same interleaved rounds (``timing.interleaved_times``); the ratios
to keras.applications' are medians of per-round ratios with 95 % confidence intervals.
"""
import os
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow import keras

from efficientnet_ipu import export, models
from efficientnet_ipu.benchmark.timing import interleaved_times, paired_ratio

KERAS_APPLICATIONS = "keras.applications"


def _keras_application(size, resolution):
    name = "EfficientNet" + size.upper()
    return getattr(keras.applications, name)(weights=None, input_shape=(resolution,
                                                                         resolution, 3))


def exported_signatures(specs, size, resolution, root, cpu_ops=True):
    """Export and load each model; returns {label: serving_default signature}.

    ``specs``: (group size, norm) pairs of this project's EfficientNet-``size``, each
    exported portable (label "G16-ln_pn") and, with ``cpu_ops`` where this project's CPU
    ops load here, with them (``export_saved_model(portable=False)``, label
    "G16-ln_pn+ops"); the keras.applications model of the size is added as
    ``KERAS_APPLICATIONS``."""
    from efficientnet_ipu import kernels
    cpu_ops = cpu_ops and kernels.available()
    exports = []
    for g, norm in specs:
        model = models.EfficientNet(size, group_size=g, norm=norm,
                                    input_shape=(resolution, resolution, 3))
        exports.append(("G%d-%s" % (g, norm), model, True))
        if cpu_ops:
            exports.append(("G%d-%s+ops" % (g, norm), model, False))
    exports.append((KERAS_APPLICATIONS, _keras_application(size, resolution), True))
    signatures = {}
    for i, (label, model, portable) in enumerate(exports):
        path = export.export_saved_model(model, os.path.join(root, str(i)), 1, resolution,
                                         [], portable=portable)
        signatures[label] = export.load_saved_model(path).signatures["serving_default"]
    return signatures


def serving_rows(specs, size, resolution, batch, rounds, warmup=3, calls=5, cpu_ops=True):
    """Time every model's served signature; returns one dict per model with
    ``latency_ms`` (batch 1, median over rounds of the mean of ``calls`` calls),
    ``images_per_s`` (at ``batch``), and ``latency_vs_keras`` / ``throughput_vs_keras``
    ((median, q25, q75, ci_low, ci_high) of per-round ratios; latency ratio < 1 and
    throughput ratio > 1 mean faster than keras.applications')."""
    side = int(round(resolution * 256 / 224))
    rng = np.random.default_rng(0)
    one = tf.constant(rng.integers(0, 256, (1, side, side, 3)), tf.uint8)
    many = tf.constant(rng.integers(0, 256, (batch, side, side, 3)), tf.uint8)
    with tempfile.TemporaryDirectory() as root:
        signatures = exported_signatures(specs, size, resolution, root, cpu_ops)
        fns = {}
        for label, serve in signatures.items():
            fns[(label, 1)] = (lambda s=serve: [s(images=one)["probabilities"].numpy()
                                                for _ in range(calls)])
            fns[(label, batch)] = lambda s=serve: s(images=many)["probabilities"].numpy()
        times = interleaved_times(fns, rounds, warmup)
    rows = []
    for label in signatures:
        latency = [t / calls for t in times[(label, 1)]]
        keras_latency = [t / calls for t in times[(KERAS_APPLICATIONS, 1)]]
        rows.append(dict(
            model=label, size=size, resolution=resolution, batch=batch,
            latency_ms=1000 * float(np.median(latency)),
            images_per_s=batch / float(np.median(times[(label, batch)])),
            latency_vs_keras=paired_ratio(latency, keras_latency),
            throughput_vs_keras=paired_ratio(times[(KERAS_APPLICATIONS, batch)],
                                             times[(label, batch)])))
    return rows


def print_serving_rows(rows):
    print("Served SavedModel (serving_default, uint8 images, resize + crop inside):")
    print("  %-20s %5s %9s %12s %12s %30s %30s" % (
        "model", "res", "batch", "latency ms", "images/s", "latency vs keras [95% CI]",
        "images/s vs keras [95% CI]"))
    for r in rows:
        lat, thr = r["latency_vs_keras"], r["throughput_vs_keras"]
        print("  %-20s %5d %9d %12.2f %12.1f %12.3fx [%.3f, %.3f] %12.3fx [%.3f, %.3f]" % (
            r["model"], r["resolution"], r["batch"], r["latency_ms"], r["images_per_s"],
            lat[0], lat[3], lat[4], thr[0], thr[3], thr[4]))


SERVING_CONV_FORMS = ("grouped", "split")  # TensorFlow-ops forms of GroupConv2D


def conv_form_rows(size, group_size, resolution, batch, rounds, warmup=3):
    """Forward (inference) time of each distinct GroupConv2D of EfficientNet-``size``-G
    at ``resolution``, in each TensorFlow-ops form a portable export can trace
    (``SERVING_CONV_FORMS``: one grouped ``conv2d``, or one ``conv2d`` per group and a
    concatenation; ``kernels.settings.override(conv=...)``), at batch 1 and ``batch``,
    all in the same interleaved rounds. Returns one dict per (layer shape, batch) with
    ``count`` (layers of that shape), ``ms`` {form: median ms} and ``best``."""
    from efficientnet_ipu import kernels, layers as L
    from efficientnet_ipu.benchmark.layer_tables import group_conv_layer_shapes
    model = models.EfficientNet(size, group_size=group_size, norm="bn")
    shapes = group_conv_layer_shapes(model, resolution, 1)
    fns, rng = {}, np.random.default_rng(0)
    for (shape, k, stride, g, filters), _ in shapes:
        layer = L.GroupConv2D(filters, k, strides=stride, group_size=g, kernels="tensorflow")
        for n in (1, batch):
            x = tf.constant(rng.normal(size=(n,) + shape[1:]).astype(np.float32))
            layer(x)
            for form in SERVING_CONV_FORMS:
                with kernels.tensorflow_only(), kernels.settings.override(conv=form):
                    fn = tf.function(lambda t, layer=layer: layer(t)).get_concrete_function(x)
                fns[(shape, k, stride, n, form)] = lambda fn=fn, x=x: fn(x).numpy()
    times = interleaved_times(fns, rounds, warmup)
    rows = []
    for (shape, k, stride, g, filters), count in shapes:
        for n in (1, batch):
            ms = {form: 1000 * float(np.median(times[(shape, k, stride, n, form)]))
                  for form in SERVING_CONV_FORMS}
            rows.append(dict(input=shape[1:], kernel=k, strides=stride, filters=filters,
                             count=count, batch=n, ms=ms, best=min(ms, key=ms.get)))
    return rows


def print_conv_form_rows(rows):
    print("GroupConv2D forward in each TensorFlow-ops form (median ms):")
    print("  %-16s %3s %3s %6s %5s %5s " % ("input", "k", "s", "out", "count", "batch")
          + " ".join("%9s" % f for f in SERVING_CONV_FORMS) + "  best")
    totals = {}
    for r in rows:
        print("  %-16s %3d %3d %6d %5d %5d " % (
            "x".join(str(d) for d in r["input"]), r["kernel"], r["strides"], r["filters"],
            r["count"], r["batch"]) + " ".join("%9.3f" % r["ms"][f]
                                               for f in SERVING_CONV_FORMS)
            + "  " + r["best"])
        for f in SERVING_CONV_FORMS:
            totals[(r["batch"], f)] = totals.get((r["batch"], f), 0.0) + r["count"] * r["ms"][f]
    for (n, f), total in sorted(totals.items()):
        print("  summed over the model's layers, batch %d, %s: %.2f ms" % (n, f, total))
