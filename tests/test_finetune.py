"""Paper 001's resolution method after training: fine-tuning the last blocks at the test
size, the test-size sweep, the main job's stages, and load_model."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow import keras

from conftest import REPO, kill_at_checkpoint
import efficientnet_ipu
from efficientnet_ipu import average as average_lib
from efficientnet_ipu import config as config_lib
from efficientnet_ipu import data, evaluate, finetune, models, stages
from efficientnet_ipu import workdir as workdir_lib

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def digits_config(size="b0", norm="ln_pn"):
    c = config_lib.base_config()
    c.model.size, c.model.group_size, c.model.norm = size, 16, norm
    c.model.dropout_rate = 0.0
    c.dataset.name = "digits"
    c.image_size.train = c.image_size.eval = 32
    c.train.update(dict(micro_batch_size=16, eval_steps=2))
    c.finetune.update(dict(epochs=1, micro_batch_size=8, gradient_accumulation=2,
                           steps_per_epoch=3, image_size=64))
    return c


def untrained_workdir(path, config):
    """A workdir as training leaves it (config, model, averaged weights), with freshly
    initialized weights standing in for trained ones. BN's moving statistics are set to
    one batch's statistics: with the initial ones (0 and 1) the signal of an untrained
    network in inference mode fades to about 1e-5 at the top, and the head's BN then
    learns too slowly to see in a few steps."""
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    kwargs = config_lib.model_kwargs(config, 10)
    with open(os.path.join(path, "model.json"), "w") as f:
        json.dump(kwargs, f)
    model = models.EfficientNet(**kwargs)
    norms = [l for l in models.iter_layers(model)
             if isinstance(l, keras.layers.BatchNormalization)]
    if norms:
        for layer in norms:
            layer.momentum = 0.0
        images, _ = next(iter(data.eval_dataset(data.open_source(config.dataset), config, 32)))
        model(images, training=True)
    average_lib.save_weights(model, os.path.join(path, average_lib.AVERAGED_DIR))
    return str(path)


def weights_by_layer(model):
    """{(top-level layer name, index): numpy value} of every weight of the model."""
    return {(layer.name, i): w.numpy() for layer in model.layers
            for i, w in enumerate(layer.weights)}


@pytest.mark.parametrize("size,norm,blocks,trained", [
    # Depth 1 is the SGD test's and the main job's below.
    ("b0", "bn", 3, {"top_conv", "top_norm_act", "predictions", "block7a", "block6a",
                     "block6b", "block6c", "block6d"}),
    ("b3", "ln_pn", 2, {"top_conv", "top_norm_act", "predictions", "block7a", "block7b"}),
])
def test_finetune_changes_exactly_the_layers_of_its_depth(tmp_path, size, norm, blocks,
                                                          trained):
    workdir = untrained_workdir(tmp_path / "run", digits_config(size, norm))
    tuner = finetune.FineTuner(workdir, blocks=blocks)
    assert {l.name for l in tuner.trained if l.weights} == trained
    before = weights_by_layer(tuner.model)
    results = tuner.run()
    after = weights_by_layer(tuner.model)
    assert results["steps"] == 3 and results["image_size"] == 64
    assert results["start"] == "averaged"
    changed = {key for key in before if not np.array_equal(before[key], after[key])}
    # Every variable outside the trained layers is unchanged bit for bit (BN's moving
    # statistics included: those layers run in inference mode) ...
    assert {name for name, _ in changed} == trained
    # ... and every trainable variable of the trained layers moved.
    for layer in tuner.trained:
        for i, w in enumerate(layer.weights):
            if w.trainable:
                assert (layer.name, i) in changed, (layer.name, w.name)
    if norm == "bn":  # the head's BN runs in training mode: its moving statistics move
        moving = [(l.name, i) for l in tuner.trained for i, w in enumerate(l.weights)
                  if not w.trainable]
        assert moving and all(key in changed for key in moving)
    # The saved weights are the fine-tuned ones.
    reloaded = efficientnet_ipu.load_model(workdir, "finetuned")
    for a, b in zip(reloaded.weights, tuner.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_finetune_is_vanilla_sgd_with_a_cosine_schedule(tmp_path):
    config = digits_config()
    config.finetune.update(dict(gradient_accumulation=1, epochs=2, steps_per_epoch=4))
    workdir = untrained_workdir(tmp_path / "run", config)
    tuner = finetune.FineTuner(workdir, blocks=1)
    peak = 2.0 ** -11 * 8  # base x global batch (micro 8 x accumulation 1)
    total = 8
    for step in (0, 2, 4, 6, 8):
        expected = peak * 0.5 * (1 + math.cos(math.pi * step / total))
        assert float(tuner.schedule(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert float(tuner.schedule(8)) == pytest.approx(0.0, abs=1e-12)

    # One step is w - lr_0 x grad, the gradient computed here from the model's own graph:
    # features from the frozen part in inference mode, then the head.
    images, labels = next(iter(data.finetune_dataset(tuner.source, tuner.config, 64, 0, 1)))
    model = tuner.model
    frozen = keras.Model(model.inputs, model.get_layer("block7a").output)
    features = frozen(images[0, 0], training=False)   # replica 0, micro-batch 0
    head = [model.get_layer(n) for n in ("top_conv", "top_norm_act", "avg_pool",
                                         "predictions")]
    variables = [w for layer in head for w in layer.trainable_weights]
    with tf.GradientTape() as tape:
        x = features
        for layer in head:
            x = layer(x, training=True)
        loss = tf.reduce_mean(keras.losses.categorical_crossentropy(
            labels[0, 0], x, from_logits=True, label_smoothing=0.1))
    grads = tape.gradient(loss, variables)
    expected = [v.numpy() - peak * g.numpy() for v, g in zip(variables, grads)]
    tuner._train_step(images, labels)
    assert [id(v) for v in tuner.variables] == [id(v) for v in variables]
    for v, e in zip(variables, expected):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-4, atol=1e-6)


def test_finetune_data_is_the_evaluation_preprocessing(tmp_path):
    config = digits_config()
    config.dataset.train_examples = 16
    source = data.open_source(config.dataset)
    images, labels = next(iter(data.finetune_dataset(source, config, 48, 0, 1)))
    assert images.shape == (1, 2, 8, 48, 48, 3) and labels.shape == (1, 2, 8, 10)
    raw = list(source.train().take(16))
    expected = np.stack([data.eval_preprocess(image, 48).numpy() for image, _, _ in raw])
    expected_labels = [int(label) for _, label, _ in raw]
    seen = set()
    for image, label in zip(np.reshape(images, (16, 48, 48, 3)), np.reshape(labels, (16, 10))):
        distance = np.abs(expected - image).reshape(16, -1).max(axis=1)
        match = int(np.argmin(distance))
        assert distance[match] == 0          # no crop, flip or mixing
        assert int(np.argmax(label)) == expected_labels[match] and label.max() == 1.0
        seen.add(match)
    assert seen == set(range(16))            # every example once per epoch


def test_killed_finetune_resumes_and_matches_an_uninterrupted_one(tmp_path):
    config = digits_config()
    config.finetune.update(dict(epochs=3, steps_per_epoch=10, image_size=64))
    workdir = untrained_workdir(tmp_path / "run", config)
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    args = [sys.executable, "-m", "efficientnet_ipu.finetune", "--workdir=" + workdir,
            "--blocks=1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV,
                            cwd=REPO, text=True)
    kill_at_checkpoint(proc, os.path.join(workdir_lib.finetune_dir(workdir, 64, 1),
                                          "checkpoints"), "ckpt-10")
    results = os.path.join(workdir_lib.finetune_dir(workdir, 64, 1), "eval_results.json")
    assert not os.path.exists(results)

    second = subprocess.run(args, capture_output=True, text=True, timeout=600, env=ENV,
                            cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = [l for l in second.stdout.splitlines() if "Resumed fine-tuning" in l]
    assert resumed and 10 <= int(resumed[0].rsplit("step", 1)[1]) <= 30, second.stdout
    assert json.load(open(results))["steps"] == 30

    finetune.FineTuner(copy, blocks=1).run()
    killed = efficientnet_ipu.load_model(workdir, "finetuned")
    whole = efficientnet_ipu.load_model(copy, "finetuned")
    for a, b in zip(killed.weights, whole.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def method_workdir(tmp_path_factory):
    """The main job's stages on the embedded digits: a short training at 32 px, a 1-block
    fine-tune at 64 px, a sweep over 32 and 64 px, the export."""
    workdir = str(tmp_path_factory.mktemp("method") / "run")
    c = digits_config()
    c.augment.flip = False
    c.augment.min_area = 0.8
    c.train.update(dict(epochs=2, micro_batch_size=32, steps_per_epoch=44,
                        gradient_accumulation=1, rmsprop_decay_per_example=2.0 ** -8,
                        base_learning_rate=2.0 ** -16, warmup_epochs=0.5, eval_steps=0))
    c.average.decay = 0.5
    c.finetune.update(dict(enabled=True, image_size=64, blocks=1, steps_per_epoch=25,
                           micro_batch_size=16, gradient_accumulation=2,
                           base_learning_rate=2.0 ** -9))
    c.sweep.image_sizes = "32,64"
    results = stages.run(c, workdir)
    return workdir, c, results


def test_main_job_runs_every_stage_and_skips_finished_ones(method_workdir, capsys):
    workdir, config, results = method_workdir
    for name in ("eval_results.json", "averaged/weights.index",
                 "finetune/r64_b1/eval_results.json", "finetune/r64_b1/weights/weights.index",
                 "sweep/sweep.csv", "sweep/sweep.png", "export/113/saved_model.pb"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert results["export"] == os.path.join(workdir, "export", "113")  # 88 + 25 steps
    rows = evaluate.read_rows(os.path.join(workdir, "sweep", "sweep.csv"))
    assert sorted((r["weights"], r["image_size"]) for r in rows) == [
        ("averaged", "32"), ("averaged", "64"), ("finetuned_r64_b1", "32"),
        ("finetuned_r64_b1", "64"), ("last", "32"), ("last", "64")]
    assert open(os.path.join(workdir, "sweep", "sweep.png"), "rb").read(4) == b"\x89PNG"
    # Trained at 32 px for 88 steps, the model reads digits; fine-tuning at 64 px (25 steps)
    # makes it read them at 64 px better than the weights it started from.
    by = {(r["weights"], int(r["image_size"])): float(r["top1"]) for r in rows}
    assert by[("averaged", 32)] > 0.5
    assert by[("finetuned_r64_b1", 64)] > by[("averaged", 64)]

    capsys.readouterr()
    again = stages.run(config, workdir)
    out = capsys.readouterr().out
    assert "Training finished earlier" in out and "exists" in out
    assert again["finetune"] == results["finetune"]
    assert len(again["sweep"]) == 6


def test_sweep_rows_equal_separate_evaluations(method_workdir):
    workdir, config, _ = method_workdir
    rows = evaluate.read_rows(os.path.join(workdir, "sweep", "sweep.csv"))
    source = data.open_source(config.dataset)
    for kind in ("averaged", "finetuned"):
        model = efficientnet_ipu.load_model(workdir, kind)
        label = workdir_lib.find_weights(workdir, kind).label
        for size in (32, 64):
            c = config.copy_and_resolve_references()
            c.image_size.eval = size
            metrics = evaluate.Evaluator(model)(data.eval_dataset(source, c, 16))
            row = [r for r in rows if r["weights"] == label and int(r["image_size"]) == size]
            assert len(row) == 1
            assert float(row[0]["top1"]) == pytest.approx(metrics["top1"], abs=1e-5)
            assert float(row[0]["top5"]) == pytest.approx(metrics["top5"], abs=1e-5)
            assert int(row[0]["examples"]) == metrics["examples"] == 360


def test_load_model_reproduces_the_export_on_real_jpegs(method_workdir, imagenet_images):
    workdir, _, results = method_workdir
    model = efficientnet_ipu.load_model(workdir, "finetuned")
    size = workdir_lib.find_weights(workdir, "finetuned").image_size
    serve = tf.saved_model.load(results["export"]).signatures["serving_default"]
    for path in imagenet_images[:8]:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        served = serve(images=image[None])["probabilities"].numpy()
        ours = tf.nn.softmax(model(data.eval_preprocess(image, size)[None],
                                   training=False)).numpy()
        np.testing.assert_allclose(ours, served, atol=2e-4)


def test_bad_finetune_and_sweep_arguments_fail_before_any_work(method_workdir, tmp_path):
    workdir, _, _ = method_workdir
    with pytest.raises(SystemExit):
        finetune.main(["--workdir=" + workdir, "--blocks=4"])
    with pytest.raises(ValueError, match="config.finetune.blocks must be one of"):
        finetune.FineTuner(workdir, blocks=4)
    with pytest.raises(ValueError, match="config.finetune has no field"):
        finetune.FineTuner(workdir, overrides=dict(epoch=3))
    with pytest.raises(FileNotFoundError, match="config.json"):
        finetune.FineTuner(str(tmp_path))
    with pytest.raises(ValueError, match="image sizes must be"):
        config_lib.parse_sizes("64:32:16")
    with pytest.raises(ValueError, match="weights must be 'all' or"):
        config_lib.parse_weights("best")
    with pytest.raises(FileNotFoundError, match="no finished fine-tune .*present: "
                                                "finetuned_r64_b1"):
        workdir_lib.find_weights(workdir, "finetuned", image_size=96)
    with pytest.raises(ValueError, match="weights must be one of"):
        efficientnet_ipu.load_model(workdir, "best")
    with pytest.raises(SystemExit):
        evaluate.main(["--workdir=" + workdir, "--image_sizes=abc"])
