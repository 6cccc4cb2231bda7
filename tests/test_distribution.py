"""Data-parallel training on TensorFlow's engine: MirroredStrategy over two logical CPU
devices gives the weights of one device on the same global batches (in a fresh process:
logical devices are fixed when TensorFlow starts)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from efficientnet_ipu import data

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)

SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from efficientnet_ipu import config as config_lib, train


def run(devices, workdir, out):
    c = config_lib.base_config()
    c.model.size, c.model.group_size, c.model.norm = "b0", 16, "ln_pn"
    c.model.drop_connect_rate = 0.0    # no per-replica random draws: the runs must agree
    c.model.dropout_rate = 0.0
    c.dataset.name = "digits"
    c.image_size.train = c.image_size.eval = 32
    c.augment.flip = False
    c.augment.mixup_alpha = 0.0
    c.strategy.name = "mirrored" if devices > 1 else "default"
    c.train.update(dict(epochs=1, micro_batch_size=16 // devices, gradient_accumulation=1,
                        steps_per_epoch=3, eval_steps=1, warmup_epochs=0.5,
                        base_learning_rate=2.0 ** -12, log_every_steps=100))
    c.average.enabled = False
    c.export.enabled = False
    trainer = train.Trainer(c, workdir)
    assert trainer.replicas == devices, trainer.replicas
    initial = [w.numpy() for w in trainer.model.weights]
    trainer.train()
    np.savez(out, *[w.numpy() for w in trainer.model.weights])
    np.savez(out + ".initial.npz", *initial)


run(1, sys.argv[1] + "/work_1", sys.argv[1] + "/weights_1.npz")
run(2, sys.argv[1] + "/work_2", sys.argv[1] + "/weights_2.npz")
"""


def load(path):
    data = np.load(path)
    return [data["arr_%d" % i] for i in range(len(data.files))]


def test_per_replica_batches_give_replica_r_the_rth_micro_batch_of_each_global_one():
    """[R, A, M] steps from numbered micro-batches: replica r, accumulation step a holds
    micro-batch a R + r; with R = 1 the layout is [1, A, M]."""
    micro = tf.data.Dataset.range(12).map(lambda i: (tf.fill([3, 2], i), tf.fill([3], i)))
    images, labels = next(iter(data.per_replica_batches(micro, accumulation=3, replicas=2)))
    assert images.shape == (2, 3, 3, 2) and labels.shape == (2, 3, 3)
    for r in range(2):
        for a in range(3):
            assert np.all(images[r, a].numpy() == a * 2 + r)
            assert np.all(labels[r, a].numpy() == a * 2 + r)
    images, _ = next(iter(data.per_replica_batches(micro, accumulation=4, replicas=1)))
    assert images.shape == (1, 4, 3, 2) and np.all(images[0, 3].numpy() == 3)


@pytest.mark.slow
def test_two_mirrored_cpu_devices_match_one_device_after_3_steps(tmp_path):
    """One process with two logical CPU devices: the default strategy on one of them
    (micro-batch 16), then MirroredStrategy on both (micro-batch 8 each, the same global
    batches)."""
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=ENV,
                            timeout=600, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    init_one, one = (load(str(tmp_path / "weights_1.npz.initial.npz")),
                     load(str(tmp_path / "weights_1.npz")))
    init_two, two = (load(str(tmp_path / "weights_2.npz.initial.npz")),
                     load(str(tmp_path / "weights_2.npz")))
    assert len(one) == len(two) == len(init_one)
    for a, b in zip(init_one, init_two):          # the same seed, the same start
        np.testing.assert_array_equal(a, b)
    moved = sum(not np.allclose(a, b, atol=1e-6) for a, b in zip(init_one, one))
    assert moved > len(one) // 2                  # the 3 steps changed most weights
    # Float32 round-off of the summed gradients, through RMSProp's normalization: every
    # difference is under 0.1 % of the largest change the 3 steps made.
    update = max(float(np.max(np.abs(a - b))) for a, b in zip(one, init_one))
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))
    assert difference <= 1e-3 * update, (difference, update)
