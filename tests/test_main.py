"""The training program end to end: real-data training, export, resume after a kill, and
clear errors on bad input before any training starts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, kill_at_checkpoint, shared_path, while_loops
from efficientnet_ipu import config as config_lib
from efficientnet_ipu import optimizers, stages, train

DEMO = os.path.join(REPO, "experiments", "demo.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def run_main(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "efficientnet_ipu.main"] + list(args),
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def small_config(name, **dataset):
    c = config_lib.base_config()
    c.model.size, c.model.group_size, c.model.norm = "b0", 16, "ln_pn"
    c.dataset.name = name
    for key, value in dataset.items():
        c.dataset[key] = value
    c.image_size.train = c.image_size.eval = 32
    c.augment.min_area = 1.0   # whole images, flips only: the loss curve shows learning
    c.model.dropout_rate = 0.0
    c.train.update(dict(epochs=1, micro_batch_size=16, gradient_accumulation=2,
                        steps_per_epoch=40, eval_steps=4, warmup_epochs=0.1,
                        rmsprop_decay_per_example=2.0 ** -6, log_every_steps=5,
                        base_learning_rate=2.0 ** -16))  # as experiments/demo.py
    return c


def test_trains_on_real_jpegs_loss_decreases_and_export_serves_in_fresh_process(tmp_path):
    root = shared_path("cifar10_jpg")
    config = small_config("image_folder:" + root, train_split="test", eval_split="test",
                          train_examples=64)
    trainer = train.Trainer(config, str(tmp_path))
    # The paper's RMSProp: TF1's update, epsilon inside the square root as configured.
    assert isinstance(trainer.optimizer, optimizers.RMSPropTF1)
    assert trainer.optimizer.epsilon == config.train.rmsprop_epsilon
    metrics = trainer.train()
    stages.export_stage(config, str(tmp_path), trainer.source.class_names)
    losses = np.array([loss for _, loss in trainer.history])
    assert len(losses) == 40 and np.all(np.isfinite(losses))
    assert losses[-8:].mean() < losses[:8].mean() - 0.1, losses
    assert metrics["examples"] == 4 * 16 and 0 <= metrics["top1"] <= metrics["top5"] <= 1
    for name in ("config.json", "eval_results.json", "checkpoints/checkpoint",
                 "tensorboard/train", "tensorboard/eval", "export/40/saved_model.pb",
                 "export/40/assets/labels.txt"):
        assert os.path.exists(os.path.join(tmp_path, name)), name

    # A real JPEG through the export, in fresh processes.
    jpeg = os.path.join(root, "test", "cat", sorted(os.listdir(os.path.join(root, "test",
                                                                            "cat")))[0])
    image = tf.io.decode_jpeg(tf.io.read_file(jpeg), channels=3)
    expected = trainer.model(tf.image.resize(tf.cast(image, tf.float32)[None], (37, 37))
                             [:, 2:34, 2:34], training=False).numpy()[0]
    out = subprocess.run([sys.executable, "-m", "efficientnet_ipu.predict",
                          "--model=%s" % os.path.join(tmp_path, "export"), jpeg],
                         capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == jpeg and len(lines) == 6
    names = open(os.path.join(tmp_path, "export/40/assets/labels.txt")).read().split()
    assert names[int(np.argmax(expected))] in lines[1]  # same top-1 as the Keras model

    npy = os.path.join(tmp_path, "image.npy")
    np.save(npy, image.numpy()[None])
    cli = subprocess.run(["saved_model_cli", "run", "--dir", os.path.join(tmp_path, "export/40"),
                          "--tag_set", "serve", "--signature_def", "serving_default",
                          "--inputs", "images=" + npy], capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "probabilities" in cli.stdout and "classes" in cli.stdout


def checkpoint_values(prefix):
    """{variable name: value} of a checkpoint, without the save counter."""
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(prefix)
            if "save_counter" not in name}


def test_killed_run_resumes_bit_identical_to_an_uninterrupted_run_of_the_same_seed(tmp_path):
    """Every random draw on: random crops, Mixup, CutMix, dropout and stochastic depth. A
    run killed mid-epoch and resumed ends with the same bits as one that never stopped."""
    random = ["--config.augment.mixup_alpha=0.2", "--config.augment.cutmix_lambda=0.5",
              "--config.train.epochs=2", "--config.train.steps_per_epoch=12",
              "--config.train.checkpoint_every_steps=5", "--config.train.eval_steps=2",
              "--config.export.enabled=False", "--config.seed=3"]
    uninterrupted = str(tmp_path / "uninterrupted")
    first = run_main("--config=" + DEMO, "--workdir=" + uninterrupted, *random)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    workdir = str(tmp_path / "run")
    args = ["--config=" + DEMO, "--workdir=" + workdir] + random
    proc = subprocess.Popen([sys.executable, "-m", "efficientnet_ipu.main"] + args,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV,
                            cwd=REPO, text=True)
    kill_at_checkpoint(proc, os.path.join(workdir, "checkpoints"), "ckpt-15", poll=0.05)
    assert not os.path.exists(os.path.join(workdir, "eval_results.json"))

    second = run_main(*args)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed = [l for l in (second.stdout + second.stderr).splitlines() if "Resumed from" in l]
    assert resumed, second.stdout[-2000:]
    step = int(resumed[0].rsplit("step", 1)[1])
    assert 15 <= step < 24 and step % 12 != 0  # mid-epoch (epoch 2 starts at step 12)
    summary = json.load(open(os.path.join(workdir, stages.SUMMARY_FILE)))
    assert summary["status"] == "finished" and summary["step"] == 24
    assert summary["resumed_from_step"] == step

    ours = checkpoint_values(os.path.join(workdir, "checkpoints", "ckpt-24"))
    theirs = checkpoint_values(os.path.join(uninterrupted, "checkpoints", "ckpt-24"))
    assert sorted(ours) == sorted(theirs)
    different = [name for name in ours if not np.array_equal(ours[name], theirs[name])]
    assert not different, different[:5]
    results = [json.load(open(os.path.join(d, "eval_results.json")))
               for d in (workdir, uninterrupted)]
    assert results[0]["top1"] == results[1]["top1"]


# Through the command line; test_reliability checks every field's validation in-process.
@pytest.mark.parametrize("override,message", [
    ("--config.train.epoch=2", "epoch"),                       # unknown field
    ("--config.dataset.name=no_such_dataset_xyz", "not a known dataset"),
    ("--config.model.norm=batchnorm", "config.model.norm must be one of"),
])
def test_bad_input_fails_before_training(tmp_path, override, message):
    workdir = str(tmp_path / "run")
    out = run_main("--config=" + DEMO, "--workdir=" + workdir, override, timeout=300)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


@pytest.mark.parametrize("in_flight", [1, 3])
def test_accumulation_loop_runs_the_configured_micro_batches_in_flight(tmp_path, in_flight):
    config = small_config("digits")
    config.train.gradient_accumulation = 4
    config.train.micro_batches_in_flight = in_flight
    trainer = train.Trainer(config, str(tmp_path))
    # One replica's batch: [replicas, accumulation, micro-batch, ...] (data.train_dataset).
    loops = while_loops(trainer._train_step, tf.TensorSpec([1, 4, 16, 32, 32, 3]),
                         tf.TensorSpec([1, 4, 16, 10]))
    assert len(loops) == 1
    assert loops[0].get_attr("parallel_iterations") == in_flight


def test_unprepared_tfds_dataset_fails_before_training(tmp_path):
    config = small_config("cifar10", data_dir=str(tmp_path / "tfds"), eval_split="test")
    with pytest.raises(ValueError, match="not prepared"):
        train.Trainer(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_every_experiment_config_loads_and_validates():
    import importlib.util
    folder = os.path.join(REPO, "experiments")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".py"))
    assert files == ["b2_g16.py", "demo.py", "imagenette.py", "paper.py", "paper_ipu.py"]
    for name in files:
        spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(folder, name))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert "python -m efficientnet_ipu.main --config=experiments/%s" % name in \
            module.__doc__, name
        if name == "imagenette.py":
            config = module.get_config("g1,gn,128")
            config_lib.validate(config)
            assert (config.model.group_size, config.model.norm, config.image_size.train) == (
                1, "gn", 128)
            for bad, field in (("g4,gn,96", "group size"), ("g16,bn,96", "norm"),
                               ("g16,gn,big", "train_size"), ("g16", "gG,norm,train_size")):
                with pytest.raises(ValueError, match=field):
                    module.get_config(bad)
        if name == "paper_ipu.py":
            paper_args = args   # the runs paper.py lists, checked below first
            for arg in paper_args:
                config = module.get_config(arg)
                config_lib.validate(config)
                s, t = config.strategy, config.train
                assert s.name == "ipu" and s.replicas * s.ipus_per_replica == 16, arg
                assert t.micro_batch_size * t.gradient_accumulation * s.replicas == 768
            continue
        if name != "paper.py":
            config_lib.validate(module.get_config())
            continue
        # Every run the docstring lists (paper 001 Tables 2-4) builds a valid config.
        args = [line.split()[0] for line in module.__doc__.splitlines()
                if line.startswith("    b") and "," in line.split()[0]]
        assert len(args) == 30
        for arg in args:
            config = module.get_config(arg)
            config_lib.validate(config)
            size, group, norm, resolution = arg.split(",")
            assert (config.model.size, config.model.group_size, config.model.norm) == (
                size, int(group[1:]), norm)
        assert module.get_config("b2,g16,ln_pn,half").image_size.train == 196
        for bad, field in (("b9,g16,gn,half", "size"), ("b0,g4,gn,half", "group size"),
                           ("b0,g16,bn,half", "norm"), ("b0,g16,gn,quarter", "resolution"),
                           ("b0,g16", "size,gG,norm,resolution")):
            with pytest.raises(ValueError, match=field):
                module.get_config(bad)


@pytest.mark.slow
def test_demo_reaches_stated_accuracy(tmp_path):
    out = run_main("--config=" + DEMO, "--workdir=" + str(tmp_path), timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.load(open(os.path.join(tmp_path, "eval_results.json")))
    assert result["top1"] >= 0.95, result
