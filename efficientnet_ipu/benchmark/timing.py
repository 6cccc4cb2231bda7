"""Timing and statistics: interleaved rounds, medians with confidence intervals, paired
ratios, and the compiled forward + backward step of a layer."""
import math
import time

import numpy as np
import tensorflow as tf


def _sync(result):
    """Force the computation (eager results may be lazy on some devices)."""
    for t in tf.nest.flatten(result):
        t.numpy()


def interleaved_times(fns, rounds, warmup):
    """Wall times (s, one per round) of each zero-argument callable in ``fns`` (a dict),
    timed in ``rounds`` interleaved rounds (one call of each per round, after ``warmup``
    untimed calls each), so that changes in machine load affect every entry alike and
    the times of one round can be compared pairwise (``paired_ratio``). Each round runs
    the entries in a new random order (seeded, so runs repeat), so that no entry always
    runs first or always after the same neighbour (the entry after a heavy one can run
    slower on the caches it leaves)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in names}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for name in [names[j] for j in order.permutation(len(names))]:
            tic = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - tic)
    return times


def interleaved_medians(fns, rounds, warmup):
    """Median wall time (s) of each callable, timed as ``interleaved_times`` does."""
    return {name: float(np.median(t))
            for name, t in interleaved_times(fns, rounds, warmup).items()}


def median_ci(values, confidence=0.95):
    """Distribution-free confidence interval (low, high) of the median of ``values``: the
    order statistics x_(j) <= x_(n+1-j) with the largest j such that
    P(j <= B < n + 1 - j) >= ``confidence`` for B ~ Binomial(n, 1/2) (the sign-test
    interval; e.g. Conover, Practical Nonparametric Statistics, sec. 3.2). With fewer than
    6 values no interval reaches 95 %, and (min, max) is returned."""
    x = np.sort(np.asarray(values, np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    # The interval [x_(j), x_(n+1-j)] covers the median with probability 1 - 2 P(B < j).
    j, tail = 1, (1 + n) / 2 ** n  # j = 1 is the full range; tail = P(B < j + 1)
    while j + 1 <= n // 2 and 1 - 2 * tail >= confidence:
        j, tail = j + 1, tail + math.comb(n, j + 1) / 2 ** n
    return float(x[j - 1]), float(x[n - j])


def paired_ratio(numerator, denominator):
    """(median, 25th, 75th percentile, 95 % CI low, CI high) over rounds of
    numerator[i] / denominator[i], for two lists of per-round times from the same
    ``interleaved_times`` call. A speed ratio of A over B is
    ``paired_ratio(times_B, times_A)``. Pairing by round cancels the load drift that both
    entries of a round share; the quartiles show the noise left in single rounds, and
    the confidence interval (``median_ci``) how well the rounds pin down the median."""
    ratios = np.asarray(numerator, np.float64) / np.asarray(denominator, np.float64)
    return (tuple(float(v) for v in np.percentile(ratios, [50, 25, 75]))
            + median_ci(ratios))


def fwd_bwd_step(fn, x):
    """A compiled forward + backward of ``fn`` (a layer, or a callable whose default
    arguments may hold layers) on the tensor ``x`` (NHWC, float32), with a fixed random
    output gradient u: the gradients with respect to x and to the trainable variables of
    ``fn`` and of the layers in its default arguments.

    Returns ``run`` (with attributes ``x``, ``upstream`` (u), ``variables`` and ``step``,
    the compiled tf.function): calling it runs the forward y = fn(x) and the gradients of
    sum(y * u) to completion and returns the first element of y and of each gradient
    (NumPy scalars). ``run.outputs()`` returns the same step's results in full:
    [y, dx, dvariables...] as NumPy arrays.

    What is timed is fn's own passes. u goes in as the tape's output gradient, so no
    elementwise loss (y * u, and its gradient) runs, and only one element of each result
    is copied out, because the ops compute every result in full anyway: both would be the
    same memory passes for every entry of a table, diluting the gaps between them.
    The forward's first element is returned so that TensorFlow cannot prune it (the
    gradients of sum(y) alone do not need y)."""
    upstream = tf.random.normal(tf.shape(fn(x)))  # builds the layers
    owners = [fn] + list(getattr(fn, "__defaults__", None) or ())
    variables = [v for obj in owners for v in getattr(obj, "trainable_variables", [])]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        grads = tape.gradient(y, [x] + variables, output_gradients=upstream)
        return [y] + grads

    @tf.function
    def first_elements():
        return [tf.reshape(t, [-1])[0] for t in step()]

    def run():
        return [t.numpy() for t in first_elements()]
    run.outputs = lambda: [t.numpy() for t in step()]
    run.x, run.upstream, run.variables, run.step = x, upstream, variables, step
    return run
