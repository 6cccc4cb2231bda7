"""Signal propagation plots (analysis/signal.py, paper 003) and the analysis commands over
a training workdir (power plots and signal propagation plots of every saved epoch)."""
import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow import keras

from efficientnet_ipu import config as config_lib
from efficientnet_ipu import average, data, models
from efficientnet_ipu.analysis import __main__ as cli
from efficientnet_ipu.analysis import power, signal


def digits(count, size=32):
    """``count`` real handwritten digits (the embedded data set), as the demo reads them:
    (float32 [count, size, size, 3] in [0, 255], int64 [count])."""
    c = config_lib.base_config()
    c.dataset.name = "digits"
    c.dataset.train_split, c.dataset.eval_split = "train", "validation"
    c.image_size.eval = size
    images, labels = next(iter(data.eval_dataset(data.open_source(c.dataset), c, count)))
    return images.numpy(), labels.numpy()


def test_channel_statistics_match_numpy():
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6)) + np.arange(6)
    sq_mean, var = signal.channel_statistics(tf.constant(x))
    flat = x.reshape(-1, 6)
    assert sq_mean == pytest.approx(np.mean(flat.mean(0) ** 2), rel=1e-12)
    assert var == pytest.approx(np.mean(flat.var(0)), rel=1e-12)


def test_signal_propagation_rows_match_a_direct_computation():
    """Activation rows pool all batches (checked at block 4 against the block's output on
    all images at once); gradient rows are of the mean loss over all images (checked for
    the classifier's kernel)."""
    model = models.EfficientNet("b0", group_size=16, norm="bn", input_shape=(32, 32, 3),
                                num_classes=10)
    images, labels = digits(12)
    rows = signal.signal_propagation(model, images, labels, epoch=3, batch_size=5)
    acts = [r for r in rows if r["kind"] == "activations"]
    assert [r["layer"] for r in acts][:2] == ["stem_norm_act", "block1a"]
    assert len(acts) == 18 and acts[-1]["layer"] == "top_norm_act"
    assert all(r["epoch"] == 3 for r in rows)
    block = model.get_layer(acts[4]["layer"])
    out = keras.Model(model.inputs, block.output)(images, training=False)
    sq_mean, var = signal.channel_statistics(out)
    assert acts[4]["channel_sq_mean"] == pytest.approx(sq_mean, rel=1e-5)
    assert acts[4]["channel_var"] == pytest.approx(var, rel=1e-5)
    dense = model.layers[-1].kernel
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, model(images, training=False)))
    grad = tape.gradient(loss, dense)
    name = getattr(dense, "path", None) or dense.name
    row = [r for r in rows if r["kind"] == "gradients" and r["layer"] == name][0]
    expected = signal.channel_statistics(grad)
    assert row["channel_sq_mean"] == pytest.approx(expected[0], rel=1e-4)
    assert row["channel_var"] == pytest.approx(expected[1], rel=1e-4)
    assert all(np.isfinite(r[s]) for r in rows for s in signal.STATISTICS)


def test_callback_records_every_epoch_to_csv_and_tensorboard(tmp_path):
    model = models.EfficientNet("b0", group_size=16, norm="ln_pn",
                                input_shape=(32, 32, 3), num_classes=10)
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = digits(16)
    callback = signal.SignalPropagationCallback(images[:8], labels[:8], str(tmp_path))
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    rows = signal.read_csv(os.path.join(str(tmp_path), "signal_propagation.csv"))
    assert sorted({r["epoch"] for r in rows}) == [0, 1]
    assert {r["kind"] for r in rows} == set(signal.KINDS)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(str(tmp_path)))
    with pytest.raises(ValueError, match="every"):
        signal.SignalPropagationCallback(images, labels, str(tmp_path), every=0)


def test_power_and_signal_commands_over_a_workdir(tmp_path, capsys):
    """A workdir as a run leaves it (config.json, model.json, the weights of epoch 1 in
    epochs/): both commands cover initialization and the epoch, write their CSV and PNG,
    and the power terms are fractions summing to 1."""
    workdir = str(tmp_path)
    c = config_lib.base_config()
    c.model.size, c.model.group_size, c.model.norm = "b0", 16, "ln_pn"
    c.dataset.name = "digits"
    c.dataset.train_split, c.dataset.eval_split = "train", "validation"
    c.image_size.train = c.image_size.eval = 32
    kwargs = config_lib.model_kwargs(c, 10)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(c.to_json_best_effort())
    with open(os.path.join(workdir, "model.json"), "w") as f:
        json.dump(kwargs, f)
    model = models.EfficientNet(**kwargs)
    for w in model.trainable_weights:       # "trained": moved off the initialization
        w.assign(w * 1.1 + 0.01)
    average.save_epoch_weights(model, workdir, 1)
    assert cli.main(["--power", "--workdir", workdir, "--count", "8"]) == 0
    assert cli.main(["--signal", "--workdir", workdir, "--count", "8"]) == 0
    out = os.path.join(workdir, "analysis")
    for name in ("power.png", "power.csv", "signal_propagation.png",
                 "signal_propagation.csv"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "power.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["label"]) for r in rows}) == [0, 1]
    for r in rows:
        assert sum(float(r[t]) for t in power.TERMS) == pytest.approx(1.0, abs=1e-5)
    first = [r["channel_mean_sq"] for r in rows if r["label"] == "0"]
    assert first != [r["channel_mean_sq"] for r in rows if r["label"] == "1"]
    spp = signal.read_csv(os.path.join(out, "signal_propagation.csv"))
    assert sorted({r["epoch"] for r in spp}) == [0, 1]
    assert os.listdir(os.path.join(workdir, "tensorboard", "signal"))
    assert "epoch 1" in capsys.readouterr().out


def test_commands_reject_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["--power", "--workdir", str(tmp_path)])      # no model.json
    with pytest.raises(SystemExit):
        cli.main(["--random-nets", "--images", str(tmp_path / "missing")])
