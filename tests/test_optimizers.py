"""RMSPropTF1 against TF1's RMSProp update written out in NumPy, on one device and under
MirroredStrategy, and the one-fused-op-per-variable graph it promises."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from efficientnet_ipu.optimizers import RMSPropTF1


def tf1_rmsprop(weights, grads_per_step, lr, rho, momentum, epsilon):
    """TF1's ApplyRMSProp (training_ops.cc), with ms starting at 1 as in RMSPropOptimizer."""
    w = [x.astype(np.float64) for x in weights]
    ms = [np.ones_like(x) for x in w]
    mom = [np.zeros_like(x) for x in w]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            ms[i] = rho * ms[i] + (1 - rho) * g ** 2
            mom[i] = momentum * mom[i] + lr * g / np.sqrt(ms[i] + epsilon)
            w[i] = w[i] - mom[i]
    return w


def test_matches_tf1_rmsprop_for_several_steps():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
               rng.normal(size=(8,)).astype(np.float32)]
    # Gradients of very different sizes: epsilon matters for the small ones.
    grads = [[rng.normal(size=w.shape).astype(np.float32) * scale
              for w, scale in zip(weights, (1e-3, 0.5))] for _ in range(5)]
    variables = [tf.Variable(w) for w in weights]
    opt = RMSPropTF1(0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
    opt.build(variables)

    @tf.function
    def step(g):
        opt.apply_gradients(zip(g, variables))

    for g in grads:
        step([tf.constant(x) for x in g])
    expected = tf1_rmsprop(weights, grads, 0.01, 0.9, 0.9, 1e-3)
    for v, e, w in zip(variables, expected, weights):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-7)
        assert np.abs(v.numpy() - w).max() > 1e-5  # the update moved the weights
    # Epsilon outside the square root (lr g / (sqrt(ms) + sqrt(eps))) would differ.
    outside = weights[0] - 0.01 * grads[0][0] / (np.sqrt(0.1 * grads[0][0] ** 2 + 0.9)
                                                 + np.sqrt(1e-3))
    assert not np.allclose(tf1_rmsprop(weights[:1], [grads[0][:1]], 0.01, 0.9, 0.9, 1e-3)[0],
                           outside, rtol=1e-4, atol=0)


def test_learning_rate_schedule_is_read_each_step():
    schedule = tf.keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.1, 0.0])
    var = tf.Variable([1.0])
    opt = RMSPropTF1(schedule, rho=0.5, momentum=0.0, epsilon=1e-3)
    opt.build([var])
    opt.apply_gradients([(tf.constant([1.0]), var)])
    moved = 1.0 - var.numpy()[0]
    np.testing.assert_allclose(moved, 0.1 / np.sqrt(0.5 + 0.5 + 1e-3), rtol=1e-6)
    opt.apply_gradients([(tf.constant([1.0]), var)])  # step 1: lr 0, momentum 0
    np.testing.assert_allclose(1.0 - var.numpy()[0], moved, rtol=1e-6)


def test_update_is_one_fused_op_per_variable():
    variables = [tf.Variable(tf.ones([4, 5])), tf.Variable(tf.ones([5])),
                 tf.Variable(tf.ones([2, 2, 3]))]
    opt = RMSPropTF1(0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
    opt.build(variables)

    @tf.function
    def step():
        opt.apply_gradients([(tf.ones_like(v), v) for v in variables])

    ops = [op.type for op in step.get_concrete_function().graph.get_operations()]
    assert ops.count("ResourceApplyRMSProp") == len(variables), ops
    assert not {"Sqrt", "Rsqrt", "RealDiv", "Square"} & set(ops), ops


def test_velocity_starts_at_one_and_momentum_at_zero():
    var = tf.Variable(tf.zeros([3, 2]))
    opt = RMSPropTF1(0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
    opt.build([var])
    slots = {("velocity" if "velocity" in v.name else "momentum"): v.numpy()
             for v in opt.variables if "velocity" in v.name or "momentum" in v.name}
    np.testing.assert_array_equal(slots["velocity"], np.ones([3, 2]))
    np.testing.assert_array_equal(slots["momentum"], np.zeros([3, 2]))


@pytest.mark.parametrize("kwargs, field", [
    (dict(centered=True), "centered"), (dict(momentum=1.0), "momentum"),
    (dict(rho=-0.1), "rho"), (dict(epsilon=0.0), "epsilon")])
def test_bad_hyperparameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RMSPropTF1(0.01, **kwargs)


def test_sparse_gradient_is_refused():
    var = tf.Variable(tf.ones([4, 2]))
    opt = RMSPropTF1(0.01, momentum=0.9)
    opt.build([var])
    grad = tf.IndexedSlices(tf.ones([1, 2]), tf.constant([1]), tf.constant([4, 2]))
    with pytest.raises(TypeError, match="sparse"):
        opt.update_step(grad, var, 0.01)


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import efficientnet_ipu
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from efficientnet_ipu.optimizers import RMSPropTF1
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 4)).astype("f4")
    xs = rng.normal(size=(2, 5, 3)).astype("f4")  # one batch per replica
    with strategy.scope():
        var = tf.Variable(w0)
        opt = RMSPropTF1(0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
        opt.build([var])
    dataset = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(xs[ctx.replica_id_in_sync_group]))
    @tf.function
    def step():
        def replica(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.matmul(x, var) ** 2)
            opt.apply_gradients([(tape.gradient(loss, var), var)])
        strategy.run(replica, args=(dataset,))
    for _ in range(3):
        step()
    print(json.dumps([v.numpy().tolist() for v in var.values]))
""")


def test_mirrored_strategy_update_matches_tf1_rmsprop_on_every_replica():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                         timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    replicas = [np.array(v) for v in json.loads(out.stdout.splitlines()[-1])]
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 4)).astype("f4")
    xs = rng.normal(size=(2, 5, 3)).astype("f4").astype(np.float64)
    expected = _replay(w0, xs, 3)
    assert len(replicas) == 2
    for r in replicas:
        np.testing.assert_allclose(r, expected, rtol=1e-5, atol=1e-6)


def _replay(w0, xs, steps, lr=0.01, rho=0.9, momentum=0.9, epsilon=1e-3):
    """TF1 RMSProp on sum_r |x_r w|^2, gradients summed over the replicas' batches."""
    w = w0.astype(np.float64)
    ms, mom = np.ones_like(w), np.zeros_like(w)
    for _ in range(steps):
        g = sum(2 * x.T @ (x @ w) for x in xs)
        ms = rho * ms + (1 - rho) * g ** 2
        mom = momentum * mom + lr * g / np.sqrt(ms + epsilon)
        w = w - mom
    return w


def test_sum_over_micro_batches_sums_every_micro_batch_once():
    from efficientnet_ipu.optimizers import sum_over_micro_batches
    data = tf.constant(np.arange(5 * 3, dtype=np.float32).reshape(5, 3))

    @tf.function
    def total(in_flight):
        return sum_over_micro_batches(
            lambda i: (data[i], [tf.reduce_sum(data[i] ** 2)]), 5, in_flight,
            (tf.zeros([3]), [tf.constant(0.0)]))

    for in_flight in (1, 2, 5):
        rows, [squares] = total(in_flight)
        np.testing.assert_array_equal(rows.numpy(), data.numpy().sum(0))
        assert squares.numpy() == (data.numpy() ** 2).sum()
    loops = [op for op in total.get_concrete_function(3).graph.get_operations()
             if op.type in ("While", "StatelessWhile")]
    assert [op.get_attr("parallel_iterations") for op in loops] == [3]
    for bad in (dict(count=0), dict(in_flight=0), dict(count=2.0)):
        args = dict(count=2, in_flight=1)
        args.update(bad)
        with pytest.raises(ValueError, match=list(bad)[0]):
            sum_over_micro_batches(lambda i: tf.constant(1.0), zeros=tf.constant(0.0), **args)
