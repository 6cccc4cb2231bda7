"""Final weights by checkpoint averaging (paper 001 sec. 3.4): the running average against a
hand computation from the per-epoch weights, continued exactly across a resume, the
recompute command, and the end-of-run evaluation and export from the averaged weights."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from efficientnet_ipu import average, config as config_lib, models, train

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def tiny_config(epochs):
    c = config_lib.base_config()
    c.model.size, c.model.group_size, c.model.norm = "b0", 16, "ln_pn"
    c.dataset.name = "digits"
    c.image_size.train = c.image_size.eval = 32
    c.augment.flip = False
    c.train.update(dict(epochs=epochs, micro_batch_size=8, gradient_accumulation=1,
                        steps_per_epoch=3, eval_steps=2, warmup_epochs=0.5,
                        base_learning_rate=2.0 ** -12, log_every_steps=100))
    c.average.keep_epoch_weights = True
    c.export.enabled = False
    return c


def epoch_weights(workdir, model):
    """The per-epoch weights as float64 arrays, by epoch."""
    out = []
    for _, path in average.epoch_checkpoints(workdir):
        tf.train.Checkpoint(model=model).read(path).assert_existing_objects_matched()
        out.append([w.numpy().astype(np.float64) for w in average.averaged_weights(model)])
    return out


def hand_average(weights, decay):
    v = weights[0]
    for w in weights[1:]:
        v = [decay * a + (1 - decay) * b for a, b in zip(v, w)]
    return v


def test_average_matches_a_hand_computation_and_continues_across_a_resume(tmp_path):
    workdir = str(tmp_path)
    first = train.Trainer(tiny_config(epochs=2), workdir)
    first.train()
    assert int(first.average.count) == 2
    del first
    # A new trainer resumes from the epoch-2 checkpoint (its average included) and runs a
    # third epoch.
    resumed = train.Trainer(tiny_config(epochs=3), workdir)
    results = resumed.train()
    assert int(resumed.average.count) == 3
    model = models.EfficientNet(**json.load(open(os.path.join(workdir, "model.json"))))
    weights = epoch_weights(workdir, model)
    assert len(weights) == 3
    assert not np.allclose(weights[0][0], weights[2][0])        # the weights moved
    expected = hand_average(weights, 0.97)
    for got, want in zip(resumed.average.values, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # The end of the run evaluates and saves the averaged weights, and reports the live
    # weights beside them; the model holds its live weights again afterwards.
    saved = json.load(open(os.path.join(workdir, "eval_results.json")))
    assert saved["weights"] == "averaged" and saved["epochs_averaged"] == 3
    assert set(saved["live"]) == {"top1", "top5"} and results["top1"] == saved["top1"]
    tf.train.Checkpoint(model=model).read(os.path.join(
        workdir, average.AVERAGED_DIR, "weights")).assert_existing_objects_matched()
    for got, want in zip(average.averaged_weights(model), expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    for live, last in zip(average.averaged_weights(resumed.model), weights[2]):
        np.testing.assert_allclose(live.numpy(), last, rtol=1e-6, atol=1e-7)

    # The command recomputes the average with another decay.
    out = subprocess.run([sys.executable, "-m", "efficientnet_ipu.average",
                          "--workdir=" + workdir, "--decay=0.5"], capture_output=True,
                         text=True, timeout=600, env=ENV, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Averaged epochs 1-3 (3) with decay 0.5" in out.stdout
    tf.train.Checkpoint(model=model).read(os.path.join(
        workdir, "averaged-0.5", "weights")).assert_existing_objects_matched()
    for got, want in zip(average.averaged_weights(model), hand_average(weights, 0.5)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_bn_moving_statistics_are_averaged_and_bad_input_is_refused(tmp_path):
    model = models.EfficientNet("b0", group_size=1, norm="bn", num_classes=3,
                                input_shape=(32, 32, 3))
    names = [w.path if hasattr(w, "path") else w.name
             for w in average.averaged_weights(model)]
    assert any("moving_mean" in n for n in names) and any("moving_variance" in n
                                                          for n in names)
    with pytest.raises(ValueError, match="decay must be in"):
        average.WeightAverage(model, 1.0)
    with pytest.raises(RuntimeError, match="no epoch has been averaged"):
        with average.WeightAverage(model).swapped_into(model):
            pass
    with pytest.raises(FileNotFoundError, match="keep_epoch_weights"):
        average.average_epochs(model, str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "efficientnet_ipu.average",
                          "--workdir=" + str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env=ENV, cwd=REPO)
    assert out.returncode == 2 and "model.json" in out.stderr
    config = config_lib.base_config()
    config.average.decay = 1.5
    with pytest.raises(ValueError, match="config.average.decay"):
        config_lib.validate(config)
