"""Faults injected into real training: a diverging run (non-finite loss), a poisoned batch
with train.nonfinite="skip", undecodable images (skipped, or stopped at with
dataset.strict), bad files and empty requests at serving, two jobs on one workdir (the
lock), and random configs."""
import json
import os
import signal
import subprocess
import sys
import time

from hypothesis import HealthCheck, given, settings, strategies as st
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, shared_path, undecodable_files
from efficientnet_ipu import config as config_lib
from efficientnet_ipu import data, export, models, train, workdir as workdir_lib

DEMO = os.path.join(REPO, "experiments", "demo.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
SHORT = ["--config.train.steps_per_epoch=10", "--config.train.eval_steps=2",
         "--config.export.enabled=False"]


def main_process(workdir, *args):
    return [sys.executable, "-m", "efficientnet_ipu.main", "--config=" + DEMO,
            "--workdir=" + workdir] + SHORT + list(args)


def checkpoint_weights_finite(prefix):
    reader = tf.train.load_checkpoint(prefix)
    for name, _ in tf.train.list_variables(prefix):
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating) and \
                not np.all(np.isfinite(value)):
            return False
    return True


def test_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    first = subprocess.run(main_process(workdir, "--config.train.epochs=1"),
                           capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    os.remove(os.path.join(workdir, "eval_results.json"))
    # The same run continued for a second epoch in float16 with a loss scale far above
    # float16's range (65504): the scaled gradients overflow at step 11, the update makes
    # the weights non-finite, and the guard stops the run at its next check.
    second = subprocess.run(main_process(workdir, "--config.train.epochs=2",
                                         "--config.train.precision=fp16",
                                         "--config.train.loss_scale=16777216",
                                         "--config.train.checkpoint_every_steps=3"),
                            capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    error = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert error and ("not finite at step" in error[0] or "is nan at step" in error[0]), \
        second.stderr[-2000:]
    assert not os.path.exists(os.path.join(workdir, "eval_results.json"))
    assert not os.path.exists(os.path.join(workdir, "export"))
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert latest.endswith("ckpt-10"), latest    # no checkpoint after the bad steps
    for prefix in tf.train.get_checkpoint_state(
            os.path.join(workdir, "checkpoints")).all_model_checkpoint_paths:
        assert checkpoint_weights_finite(prefix), prefix
    assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))


def test_skip_mode_leaves_weights_and_optimizer_unchanged_on_a_poisoned_batch(tmp_path):
    c = config_lib.base_config()
    c.model.size, c.model.group_size, c.model.norm = "b0", 16, "ln_pn"
    c.dataset.name = "digits"
    c.image_size.train = c.image_size.eval = 32
    c.train.update(dict(micro_batch_size=8, gradient_accumulation=2, steps_per_epoch=2,
                        nonfinite="skip"))
    trainer = train.Trainer(c, str(tmp_path))
    images, labels = next(iter(data.train_dataset(trainer.source, c, 0)))
    poisoned = tf.tensor_scatter_nd_update(images, [[0, 1, 3, 0, 0, 0]], [float("nan")])
    state = trainer.model.weights + trainer.optimizer.variables
    before = [v.numpy() for v in state]
    loss, _, applied = trainer._train_step(poisoned, labels)
    assert not np.isfinite(float(loss)) and float(applied) == 0.0
    for v, b in zip(state, before):
        np.testing.assert_array_equal(v.numpy(), b)
    loss, _, applied = trainer._train_step(images, labels)
    assert np.isfinite(float(loss)) and float(applied) == 1.0
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(trainer.model.weights, before))


BAD_IMAGES = ("truncated.jpg", "tiny.jpg", "empty.jpg", "text.jpg")


def image_folder_with_bad_images(root, cifar):
    """<root>/{train,val}/<class>/ from real CIFAR-10 JPEGs (16 + 4 per class, 3 classes),
    with the four kinds of undecodable file in train/cat and a truncated JPEG in val/dog.
    Returns {name: path} of the bad files."""
    import shutil
    for cls in ("airplane", "cat", "dog"):
        names = sorted(os.listdir(os.path.join(cifar, "test", cls)))[:20]
        for split, chosen in (("train", names[:16]), ("val", names[16:])):
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for name in chosen:
                shutil.copy(os.path.join(cifar, "test", cls, name),
                            os.path.join(root, split, cls, name))
    jpeg = open(os.path.join(cifar, "test", "cat", sorted(os.listdir(
        os.path.join(cifar, "test", "cat")))[0]), "rb").read()
    bad = {}
    for name, content in undecodable_files(jpeg).items():
        bad[name] = os.path.join(root, "train", "cat", name)
        open(bad[name], "wb").write(content)
    bad["val_truncated.jpg"] = os.path.join(root, "val", "dog", "val_truncated.jpg")
    open(bad["val_truncated.jpg"], "wb").write(jpeg[:len(jpeg) // 3])
    return bad


def test_undecodable_images_are_skipped_named_and_counted_and_strict_stops(tmp_path):
    cifar = shared_path("cifar10_jpg")
    folder = str(tmp_path / "images")
    bad = image_folder_with_bad_images(folder, cifar)
    common = ["--config=" + DEMO, "--config.dataset.name=image_folder:" + folder,
              "--config.dataset.train_split=train", "--config.dataset.eval_split=val",
              "--config.train.micro_batch_size=8", "--config.train.epochs=1",
              "--config.train.log_every_steps=1"]
    workdir = str(tmp_path / "run")
    run = subprocess.run([sys.executable, "-m", "efficientnet_ipu.main",
                          "--workdir=" + workdir] + common + ["--config.export.portable=False"],
                         capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    for name, path in bad.items():   # each file named in a warning
        assert "skipped undecodable image %s" % path in run.stderr, (name, run.stderr[-3000:])
    summary = json.load(open(os.path.join(workdir, "run_summary.json")))
    assert summary["status"] == "finished"
    assert (summary["step"], summary["epochs"], summary["steps_per_epoch"]) == (6, 1, 6)
    # The 4 train files in the epoch, the val file in the epoch's evaluation and in the
    # averaged weights' one: 4 + 1 x 2.
    assert summary["bad_images"]["skipped"] == 6
    assert set(summary["bad_images"]["files"]) == (
        {"train: " + bad[n] for n in BAD_IMAGES} | {"val: " + bad["val_truncated.jpg"]})
    assert summary["bad_images"]["files"]["train: " + bad["empty.jpg"]] == "Input is empty."
    assert summary["nonfinite_steps"] == 0
    assert summary["checkpoints"] and summary["checkpoints"][-1].endswith("ckpt-6")
    assert summary["export"].endswith(os.path.join("export", "6"))
    assert summary["metrics"]["averaged"]["top1"] >= 0
    results = json.load(open(os.path.join(workdir, "eval_results.json")))
    assert results["examples"] == 12          # 13 val files, one undecodable

    # Serving (the export on this project's CPU ops, which predict loads in a fresh
    # process): 0 images give 0 rows; predict names each unreadable file on one line.
    assert os.path.exists(os.path.join(summary["export"], "assets", export.CPU_OPS_FILE))
    serve = export.load_saved_model(summary["export"]).signatures["serving_default"]
    empty = serve(images=tf.zeros([0, 32, 32, 3], tf.uint8))
    assert empty["probabilities"].shape == (0, 3) and empty["classes"].shape == (0,)
    good = os.path.join(folder, "val", "cat", sorted(os.listdir(
        os.path.join(folder, "val", "cat")))[0])
    missing = str(tmp_path / "missing.jpg")
    predict = subprocess.run(
        [sys.executable, "-m", "efficientnet_ipu.predict", "--model=" + summary["export"],
         missing, folder, bad["text.jpg"], bad["truncated.jpg"], good],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=REPO)
    assert predict.returncode == 1
    errors = [l for l in predict.stderr.splitlines() if l.startswith("error:")]
    assert errors == ["error: %s: no such file" % missing,
                      "error: %s: is a folder, not an image file" % folder,
                      "error: %s: not a readable image (Unknown image file format. One of "
                      "JPEG, JPEG XL, PNG, GIF, BMP, WebP required.)" % bad["text.jpg"],
                      "error: %s: not a readable image (jpeg::Uncompress failed. Invalid "
                      "JPEG data or crop window.)" % bad["truncated.jpg"],
                      "error: 4 of 5 files could not be read"], predict.stderr[-2000:]
    assert predict.stdout.splitlines()[0] == good   # the readable one is still classified

    strict_dir = str(tmp_path / "strict")
    strict = subprocess.run([sys.executable, "-m", "efficientnet_ipu.main",
                             "--workdir=" + strict_dir] + common + ["--config.dataset.strict=True"],
                            capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
    assert strict.returncode == 1
    error = [l for l in strict.stderr.splitlines() if l.startswith("error:")]
    assert len(error) == 1 and "config.dataset.strict=True" in error[0], strict.stderr[-2000:]
    assert any("undecodable image %s in the train split" % bad[n] in error[0]
               for n in BAD_IMAGES), error[0]
    failed = json.load(open(os.path.join(strict_dir, "run_summary.json")))
    assert failed["status"] == "failed" and "BadImageError" in failed["error"]
    assert failed["step"] < 6 and not failed["export"]


def test_second_job_on_a_workdir_fails_and_a_dead_jobs_lock_is_taken_over(tmp_path):
    workdir = str(tmp_path / "run")
    args = main_process(workdir, "--config.train.epochs=3",
                        "--config.train.checkpoint_every_steps=5")
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV,
                             cwd=REPO, text=True)
    lock = os.path.join(workdir, workdir_lib.LOCK_FILE)
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not os.path.exists(lock):
        time.sleep(0.1)
    assert first.poll() is None and os.path.exists(lock)
    assert json.load(open(lock))["pid"] == first.pid

    second = subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV,
                            cwd=REPO)
    assert second.returncode == 1
    assert "in use by process %d" % first.pid in second.stderr, second.stderr[-2000:]
    assert first.poll() is None      # the first job still runs, untouched

    first.send_signal(signal.SIGKILL)
    first.wait()
    assert os.path.exists(lock)      # left behind by the killed job
    third = subprocess.run(args, capture_output=True, text=True, timeout=600, env=ENV,
                           cwd=REPO)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "Taking over the lock of process %d" % first.pid in third.stdout
    assert json.load(open(os.path.join(workdir, "eval_results.json")))["step"] == 30
    assert not os.path.exists(lock)


def test_lock_refuses_a_live_holder_in_process(tmp_path):
    with workdir_lib.WorkdirLock(str(tmp_path), "first"):
        with pytest.raises(workdir_lib.WorkdirInUseError, match="in use by process %d"
                           % os.getpid()):
            workdir_lib.WorkdirLock(str(tmp_path), "second").acquire()
    assert not os.path.exists(os.path.join(tmp_path, workdir_lib.LOCK_FILE))


# Numeric fields and values around and outside their ranges (ints for int fields).
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([-1.0, 0.0, 0.5, 1.0, 1.5, 1e-5, 2.0 ** -14, 1e38]))
INTS = st.one_of(st.integers(-3, 3000), st.sampled_from([0, 1, 2, 16, 32]))
FIELDS = {
    "model.group_size": INTS, "model.expansion_ratio": INTS, "model.norm_groups": INTS,
    "model.dropout_rate": FLOATS, "model.drop_connect_rate": FLOATS,
    "image_size.train": INTS, "image_size.eval": INTS,
    "train.epochs": INTS, "train.micro_batch_size": INTS, "train.gradient_accumulation": INTS,
    "train.steps_per_epoch": INTS, "train.eval_steps": INTS,
    "train.checkpoint_every_steps": INTS, "train.keep_checkpoints": INTS,
    "train.base_learning_rate": FLOATS, "train.warmup_epochs": FLOATS,
    "train.lr_decay": FLOATS, "train.lr_decay_epochs": FLOATS, "train.momentum": FLOATS,
    "train.rmsprop_decay_per_example": FLOATS, "train.rmsprop_epsilon": FLOATS,
    "train.weight_decay": FLOATS, "train.label_smoothing": FLOATS,
    "augment.min_area": FLOATS, "augment.max_area": FLOATS, "augment.mixup_alpha": FLOATS,
    "augment.cutmix_lambda": FLOATS, "average.decay": FLOATS,
    "finetune.epochs": INTS, "finetune.blocks": INTS, "finetune.image_size": INTS,
    "finetune.base_learning_rate": FLOATS, "finetune.momentum": FLOATS,
    "model.activation": st.sampled_from(["swish", "relu", "softmax", "", "mish"]),
    "model.norm": st.sampled_from(["bn", "ln_pn", "gn", "batchnorm"]),
}


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), min_size=1, max_size=4)
       .flatmap(lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})))
def test_random_configs_validate_or_name_a_field(values):
    config = config_lib.base_config()
    config.dataset.name = "digits"
    for path, value in values.items():
        section, field = path.split(".")
        if isinstance(config[section][field], float) and isinstance(value, int):
            value = float(value)
        config[section][field] = value
    try:
        config_lib.validate(config)
    except ValueError as error:
        assert "config." in str(error), (values, str(error))
        return
    # A config that validates builds its model.
    model = models.EfficientNet(**config_lib.model_kwargs(config, 10))
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("field,value,message", [
    ("train.steps_per_epoch", -1, "config.train.steps_per_epoch must be an integer >= 0"),
    ("train.micro_batch_size", 2000, "config.train.micro_batch_size x gradient_accumulation"),
    ("train.rmsprop_decay_per_example", 0.1, "config.train.rmsprop_decay_per_example"),
    ("train.momentum", 1.5, "config.train.momentum must be in [0, 1)"),
    ("train.base_learning_rate", -0.1, "config.train.base_learning_rate must be > 0"),
    ("train.lr_decay", -1.0, "config.train.lr_decay must be in (0, 1]"),
    ("train.warmup_epochs", -1.0, "config.train.warmup_epochs must be >= 0"),
    ("train.label_smoothing", 5.0, "config.train.label_smoothing must be in [0, 1)"),
    ("train.checkpoint_every_steps", -2, "config.train.checkpoint_every_steps"),
    ("dataset.eval_split", "", "config.dataset.eval_split must be a split name"),
    ("model.norm_groups", 3, "config.model does not build a model"),
    ("model.activation", "mish", "config.model.activation must be one of"),
    ("model.dropout_rate", 1.5, "config.model.dropout_rate must be"),
    ("model.expansion_ratio", 3000, "config.model.expansion_ratio must be an integer in"),
    ("image_size.train", 0, "config.image_size.train must be a positive integer"),
    ("train.micro_batches_in_flight", 0,
     "config.train.micro_batches_in_flight must be a positive integer"),
])
def test_bad_fields_fail_before_the_workdir_is_written(tmp_path, field, value, message):
    c = config_lib.base_config()
    c.dataset.name = "digits"
    c.model.norm = "gn"
    c.train.update(dict(micro_batch_size=16, gradient_accumulation=1))
    section, name = field.split(".")
    c[section][name] = value
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        train.Trainer(c, workdir)
    assert not os.path.exists(workdir) or not os.listdir(workdir)
