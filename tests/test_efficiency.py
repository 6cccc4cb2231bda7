"""Benchmark CLI and efficiency plots (speed targets are reported by the benchmark, never
asserted here)."""
import collections
import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, while_loops
from efficientnet_ipu import benchmark, plots
from efficientnet_ipu import layers as L


def test_pareto_front_keeps_upper_left_points():
    points = [(1.0, 70.0), (2.0, 69.0), (2.0, 75.0), (3.0, 74.0), (4.0, 80.0)]
    assert plots.pareto_front(points) == [(1.0, 70.0), (2.0, 75.0), (4.0, 80.0)]


def test_benchmark_writes_csv_and_plots_use_it(tmp_path):
    bench_csv = str(tmp_path / "bench.csv")
    assert benchmark.main(["--sizes=b0", "--group-sizes=16", "--norms=gn", "--resolutions=32",
                           "--batch=2", "--steps=1", "--warmup=1", "--no-keras-baseline",
                           "--csv=" + bench_csv]) == 0
    rows = list(csv.DictReader(open(bench_csv)))
    assert len(rows) == 1
    row = rows[0]
    assert float(row["train_img_s"]) > 0 and float(row["infer_img_s"]) > 0
    assert float(row["latency_ms"]) > 0 and 0 < float(row["of_peak"]) < 10
    assert float(row["dense_peak_gflops"]) > 0
    # Only the convolution targets apply to a single model: one per G16 implementation.
    targets = list(csv.DictReader(open(str(tmp_path / "bench_targets.csv"))))
    assert [t["target"].split(" vs ")[0] for t in targets] == [
        "GroupConv2D G16 grouped", "GroupConv2D G16 split", "GroupConv2D G16 ours",
        "GroupConv2D G16 tensorflow", "GroupConv2D G16 auto (default)"]
    for t in targets:
        assert float(t["q25"]) <= float(t["value"]) <= float(t["q75"])
        assert float(t["ci_low"]) <= float(t["value"]) <= float(t["ci_high"])
        assert t["met"] in ("yes", "no", "within noise")
    # Every timed round's step time, for pooling runs later (--pool-rounds).
    rounds = list(csv.DictReader(open(str(tmp_path / "bench_rounds.csv"))))
    assert [(r["size"], r["G"], r["norm"], r["res"], r["round"]) for r in rounds] == [
        ("b0", "16", "gn", "32", "0")]
    assert float(rounds[0]["seconds"]) > 0
    # The paper's G16-GN B0 point at 32 px training resolution, with this throughput.
    results = [r for r in csv.DictReader(open(os.path.join(REPO, "results", "accuracy.csv")))
               if r["source"] == "paper001_table2" and r["size"] == "b0" and r["G"] in ("1", "16")]
    for r in results:
        r["train_res"] = "32"
    out = str(tmp_path / "plot.png")
    assert plots.plot(results, out, rows) == 3
    import matplotlib.image
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 100 and image.shape[1] > 300


def test_paired_ratio_cancels_drift_shared_by_a_round():
    # The load doubles in round 2 for both entries: the paired ratio stays exactly 2.
    assert benchmark.paired_ratio([2.0, 4.0, 2.0], [1.0, 2.0, 1.0]) == (2.0,) * 5


def test_median_ci_is_the_sign_test_interval():
    # Order statistics of the binomial (sign-test) interval: for n = 16 the 4th and 13th
    # (coverage 97.9 %; the 5th and 12th give only 92.3 %), for n = 100 the 40th and 61st.
    assert benchmark.median_ci(np.arange(16.0)[::-1]) == (3.0, 12.0)
    assert benchmark.median_ci(np.arange(100.0)) == (39.0, 60.0)
    assert benchmark.median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few for 95 %: the range
    # Coverage on skewed, noisy data like this machine's step-time ratios: about 95 %.
    rng = np.random.default_rng(0)
    hits = sum(lo <= 1.0 <= hi for lo, hi in (benchmark.median_ci(rng.lognormal(0, 0.1, 40))
                                              for _ in range(2000)))
    assert 0.93 < hits / 2000 < 0.99
    with pytest.raises(ValueError, match="at least one"):
        benchmark.median_ci([])


def test_interleaved_times_runs_each_round_in_a_new_order():
    """Every round runs each entry once; across rounds each entry follows each other one
    within a round and runs first (no fixed neighbour); the orders repeat run to run."""
    def run():
        calls = []
        times = benchmark.interleaved_times(
            {k: (lambda k=k: calls.append(k)) for k in "abcd"}, rounds=40, warmup=1)
        return calls, times
    calls, times = run()
    assert calls[:4] == list("abcd")                       # the warm-up calls
    rounds = [calls[4 + 4 * i:8 + 4 * i] for i in range(40)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    pairs = {(r[i], r[i + 1]) for r in rounds for i in range(3)}
    assert pairs == {(a, b) for a in "abcd" for b in "abcd" if a != b}
    assert {r[0] for r in rounds} == set("abcd")
    assert {k: len(v) for k, v in times.items()} == {k: 40 for k in "abcd"}
    assert run()[0] == calls


def test_target_rows_from_interleaved_times():
    native, half = 224, 160  # models.SIZES / HALF_RESOLUTION of b0
    times = {
        (native, "keras"): [1.2, 1.2, 2.4, 1.2],
        (native, 1, "bn"): [1.0, 1.0, 2.0, 1.0],      # 1.2x keras in every round
        (native, 16, "bn"): [1.1, 0.9, 2.0, 1.0],     # about equal to G1: within noise
        (native, 16, "gn"): [1.0, 1.0, 1.0, 1.0],
        (native, 16, "ln_pn"): [1.1, 1.1, 1.1, 1.1],  # 10 % over GN
        (half, 16, "gn"): [0.5, 0.5, 0.5, 0.5],       # 2x faster at half resolution
        (native, 16, "gn/tf-conv"): [1.3, 1.3, 1.3, 1.3],  # --compare-conv: 1.3x slower
        (native, 1, "bn/tf-conv"): [1.1, 1.1, 2.2, 1.1],   # and G1 1.1x
        (native, 16, "ln_pn/tf-proxy"): [1.21, 1.21, 1.21, 1.21],  # --compare-proxy
        (native, 16, "gn/tf-norm"): [1.15, 1.15, 1.15, 1.15],  # --compare-norm-ops
        (native, 16, "gn/1-in-flight"): [1.1, 1.1, 1.1, 1.1],  # --compare-in-flight
    }
    rows = {r["target"]: r for r in benchmark.target_rows("b0", [native, half], times)}
    # Four rounds are too few for a 95 % interval of the median: it is their full range.
    assert set(rows) == {"G1-BN vs keras B0, 224 px", "G16 vs G1, bn, 224 px",
                         "LN+PN cost over GN, G16, 224 px",
                         "half-res speed-up, G16-gn, 160 vs 224 px",
                         "G16 CPU kernels vs TF convs, gn, 224 px",
                         "G1 CPU kernels vs TF convs, bn, 224 px",
                         "fused proxy stats vs TF ops, G16 ln_pn, 224 px",
                         "fused norm ops vs TF ops, G16 gn, 224 px",
                         "micro-batches in flight vs 1, G16 gn, 224 px"}
    keras_row = rows["G1-BN vs keras B0, 224 px"]
    assert keras_row["value"] == pytest.approx(1.2) and keras_row["met"] == "yes"
    g16 = rows["G16 vs G1, bn, 224 px"]
    assert g16["met"] == "within noise"
    assert (g16["ci_low"], g16["ci_high"]) == pytest.approx((1.0 / 1.1, 1.0 / 0.9))
    cost = rows["LN+PN cost over GN, G16, 224 px"]
    assert cost["value"] == pytest.approx(0.1) and cost["met"] == "no"
    assert cost["goal"] == "<= 0.05"
    speedup = rows["half-res speed-up, G16-gn, 160 vs 224 px"]
    assert speedup["value"] == pytest.approx(2.0) and speedup["met"] == "yes"
    kernels = rows["G16 CPU kernels vs TF convs, gn, 224 px"]
    assert kernels["value"] == pytest.approx(1.3) and kernels["met"] == "yes"
    assert rows["G1 CPU kernels vs TF convs, bn, 224 px"]["value"] == pytest.approx(1.1)
    fused = rows["fused proxy stats vs TF ops, G16 ln_pn, 224 px"]
    assert fused["value"] == pytest.approx(1.1) and fused["met"] == "yes"
    norm_ops = rows["fused norm ops vs TF ops, G16 gn, 224 px"]
    assert norm_ops["value"] == pytest.approx(1.15) and norm_ops["met"] == "yes"
    in_flight = rows["micro-batches in flight vs 1, G16 gn, 224 px"]
    assert in_flight["value"] == pytest.approx(1.1) and in_flight["met"] == "yes"


def test_fixed_cost_rows_fit_the_per_step_cost_that_does_not_shrink():
    # Step times t = F + a * pixels per round, with a load factor shared by each round
    # (as interleaved rounds see it): F = 50 ms, a = 30 ms per 1000 pixels.
    load = np.array([1.0, 1.1, 0.95, 1.2, 1.0, 1.05, 0.9])
    times = {(r, 16, "gn"): list(load * (0.050 + 30e-6 * r * r)) for r in (32, 160, 224)}
    times.update({(r, 16, "ln_pn"): [1.0] * 7 for r in (160, 224)})   # two resolutions: no fit
    rows = benchmark.fixed_cost_rows("b0", times)
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == (16, "gn") and row["resolutions"] == [32, 160, 224]
    assert row["fixed_ms"] == pytest.approx(50.0)   # the median round (load 1.0)
    assert row["fixed_ci"][0] == pytest.approx(45.0) and row["fixed_ci"][1] == pytest.approx(60.0)
    assert row["ms_per_kpx"] == pytest.approx(30.0)
    # The load cancels in the bound: (F + a 224^2) / (F + a 160^2) in every round.
    bound = (0.050 + 30e-6 * 224 ** 2) / (0.050 + 30e-6 * 160 ** 2)
    assert row["bound"] == pytest.approx(bound) and bound < (224 / 160) ** 2
    assert row["bound_ci"] == pytest.approx((bound, bound))


def _write_rounds(path, size, times):
    with open(str(path), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=benchmark.ROUND_FIELDS)
        writer.writeheader()
        writer.writerows(benchmark.round_rows(size, times))


def test_pool_rounds_keeps_each_round_paired_across_runs(tmp_path, capsys):
    # Run 1: half resolution 2.0x in both rounds; run 2 (a slower machine, and a round
    # twice as slow again): 1.8x in all three. Pooled, the five paired ratios are 2, 2,
    # 1.8, 1.8, 1.8: median 1.8. Reordering one model's times (sorting them, say) would
    # pair rounds that were not timed together and change these ratios.
    _write_rounds(tmp_path / "a_rounds.csv", "b0", {
        (224, 16, "ln_pn"): [0.8, 0.9], (160, 16, "ln_pn"): [0.4, 0.45],
        (224, "keras"): [2.0, 2.1]})           # keras only in run 1: left out
    _write_rounds(tmp_path / "b_rounds.csv", "b0", {
        (224, 16, "ln_pn"): [0.9, 1.8, 0.9], (160, 16, "ln_pn"): [0.5, 1.0, 0.5]})
    paths = [str(tmp_path / "a_rounds.csv"), str(tmp_path / "b_rounds.csv")]
    pooled = benchmark.pooled_round_times(paths)
    assert pooled == {"b0": {(224, 16, "ln_pn"): [0.8, 0.9, 0.9, 1.8, 0.9],
                             (160, 16, "ln_pn"): [0.4, 0.45, 0.5, 1.0, 0.5]}}
    assert benchmark.main(["--pool-rounds=" + ",".join(paths)]) == 0
    out = capsys.readouterr().out
    assert "B0: 2 models, 5 rounds pooled" in out
    line = [l for l in out.splitlines() if "half-res speed-up, G16-ln_pn" in l][0]
    # Five rounds are too few for a 95 % interval of the median: it is their full range.
    assert "1.800  CI [1.800, 2.000]" in line and "met: within noise" in line


def test_pool_rounds_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        benchmark.pooled_round_times([str(tmp_path / "missing.csv")])
    (tmp_path / "bad.csv").write_text("size,G,norm,res,seconds\nb0,16,gn,224,0.5\n")
    with pytest.raises(ValueError, match="lacks the column.*round"):
        benchmark.pooled_round_times([str(tmp_path / "bad.csv")])
    _write_rounds(tmp_path / "uneven.csv", "b0", {(224, 16, "gn"): [0.8, 0.9],
                                                  (160, 16, "gn"): [0.4]})
    with pytest.raises(ValueError, match="unequal numbers of rounds"):
        benchmark.pooled_round_times([str(tmp_path / "uneven.csv")])
    with pytest.raises(SystemExit):  # the CLI names the flag and exits with a usage error
        benchmark.main(["--pool-rounds=" + str(tmp_path / "missing.csv")])


def test_accuracy_csv_holds_paper_tables():
    rows = list(csv.DictReader(open(os.path.join(REPO, "results", "accuracy.csv"))))
    by_source = {}
    for r in rows:
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    assert by_source == {"paper001_table2": 18, "paper001_table3": 6, "paper001_table4": 30,
                         "paper001_table5": 30}


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size must be one of"):
        benchmark.main(["--sizes=b9", "--conv"])


def test_optimizer_table_times_each_update_on_the_same_model(capsys):
    assert benchmark.main(["--optimizers", "--sizes=b0", "--group-sizes=16", "--norms=gn",
                           "--resolutions=32", "--batch=2", "--steps=2", "--warmup=1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split()[0] for line in lines if line.startswith("  ")]
    assert rows == list(benchmark.OPTIMIZERS), lines
    assert "213 variables" in "\n".join(lines)  # B0-G16's trainable variables


def test_benchmark_optimizers_are_the_training_programs_and_keras():
    from efficientnet_ipu import optimizers
    from efficientnet_ipu import config as config_lib
    opt = benchmark.make_optimizer("rmsprop", 32)
    train = config_lib.base_config().train
    assert isinstance(opt, optimizers.RMSPropTF1)
    assert opt.epsilon == train.rmsprop_epsilon and opt.momentum == train.momentum
    np.testing.assert_allclose(opt.rho, 1 - train.rmsprop_decay_per_example * 32)
    assert not isinstance(benchmark.make_optimizer("keras-rmsprop", 32),
                          optimizers.RMSPropTF1)
    with pytest.raises(ValueError, match="rmsprop, keras-rmsprop, sgd"):
        benchmark.make_optimizer("adam", 32)
    with pytest.raises(SystemExit):  # argparse names the choices
        benchmark.main(["--optimizer=adam", "--conv"])
    with pytest.raises(SystemExit):  # one micro-batch per step: nothing in flight to compare
        benchmark.main(["--compare-in-flight", "--conv"])


def test_model_bench_accumulates_micro_batches_like_the_training_program():
    from efficientnet_ipu import models
    model = models.EfficientNet("b0", group_size=16, norm="gn", num_classes=10,
                                input_shape=(32, 32, 3))
    bench = benchmark.ModelBench(model, 2, 32, gradient_accumulation=3,
                                 micro_batches_in_flight=2)
    assert bench.images_per_step == 6
    loops = while_loops(bench.train_step)
    assert len(loops) == 1 and loops[0].get_attr("parallel_iterations") == 2
    assert not while_loops(benchmark.ModelBench(model, 2, 32).train_step)
    before = [v.numpy() for v in model.trainable_variables[:3]]
    assert np.isfinite(bench.train_step().numpy())
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(before, model.trainable_variables[:3]))
    with pytest.raises(ValueError, match="micro_batches_in_flight must be an integer >= 1"):
        benchmark.ModelBench(model, 2, 32, micro_batches_in_flight=0)


def test_conv_step_times_the_forward_pass_too():
    """The conv table's step computes the forward y and both gradients with the fixed
    output gradient u, and its timed call returns the first element of each, so the
    forward convolution runs (a step returning only the gradients of sum(y) let
    TensorFlow prune it) without an elementwise loss pass."""
    layer = L.GroupConv2D(32, 3, group_size=16, implementation="grouped")
    shape = (2, 6, 6, 32)
    step = benchmark.conv_fwd_bwd_step(layer, shape)
    y, dx, dkernel = step.outputs()
    assert y.shape == (2, 6, 6, 32) and dx.shape == shape and dkernel.shape == (3, 3, 16, 32)
    np.testing.assert_array_equal(step(), [y.flat[0], dx.flat[0], dkernel.flat[0]])
    # The results are the forward and the gradients of sum(y * u).
    with tf.GradientTape() as tape:
        tape.watch(step.x)
        y_ref = layer(step.x)
        loss = tf.reduce_sum(y_ref * step.upstream)
    dx_ref, dkernel_ref = tape.gradient(loss, [step.x, layer.kernel])
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dkernel, dkernel_ref, rtol=1e-4, atol=1e-4)
    # The three convolution passes and no elementwise loss: no Mul, Sum or Fill.
    graph = step.step.get_concrete_function().graph
    ops = collections.Counter(op.type for op in graph.get_operations())
    assert ops["Conv2D"] == 1 and ops["Conv2DBackpropInput"] == 1
    assert ops["Conv2DBackpropFilter"] == 1
    assert ops["Mul"] == 0 and ops["Sum"] == 0 and ops["Fill"] == 0


def test_fwd_bwd_step_finds_the_layers_in_default_arguments():
    """The norm and block tables' step (``benchmark.fwd_bwd_step``) differentiates the
    trainable variables of layers held in a callable's default arguments, with the fixed
    output gradient u, and returns the first element of y and of each gradient."""
    x = tf.random.normal((2, 4, 4, 8))
    step = benchmark.fwd_bwd_step(
        lambda v, n=L.GroupNormalization(4): tf.nn.silu(n(v)), x)
    assert len(step.variables) == 2  # the norm's gamma and beta
    y, dx, dgamma, dbeta = step.outputs()
    np.testing.assert_array_equal(step(), [y.flat[0], dx.flat[0], dgamma.flat[0],
                                           dbeta.flat[0]])
    # dbeta of silu(norm(x)) with output gradient u is sum(u * silu'(norm(x))), not 0.
    assert np.abs(dbeta).min() > 0
    layer = L.GroupNormalization(4)
    layer.build(x.shape)
    for target, source in zip(layer.trainable_variables, step.variables):
        target.assign(source)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.nn.silu(layer(x)) * step.upstream)
    refs = tape.gradient(loss, [x] + layer.trainable_variables)
    np.testing.assert_allclose(y, tf.nn.silu(layer(x)), rtol=1e-5, atol=1e-5)
    for got, ref in zip([dx, dgamma, dbeta], refs):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_layer_table_times_every_group_conv_shape_of_the_model(capsys):
    from efficientnet_ipu import models
    model = models.EfficientNet("b0", group_size=1, norm="bn", input_shape=(64, 64, 3))
    shapes = benchmark.group_conv_layer_shapes(model, 64, 2)
    assert sum(count for _, count in shapes) == 16  # B0's 16 MBConv blocks
    first, count = shapes[0]
    assert first == ((2, 32, 32, 32), 3, 1, 1, 32) and count == 1  # block1a after the stem
    assert ((2, 4, 4, 672), 5, 2, 1, 672) in dict(shapes)  # block6a: 5x5, stride 2
    assert benchmark.main(["--layers", "--sizes=b0", "--group-sizes=1", "--norms=bn",
                           "--resolutions=32", "--batch=2", "--steps=2", "--warmup=1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("  (2, ")]
    assert len(rows) == len(benchmark.group_conv_layer_shapes(
        models.EfficientNet("b0", group_size=1, norm="bn", input_shape=(32, 32, 3)), 32, 2))
    assert lines[-1].startswith("  summed over the layers, net of the overhead: tensorflow")
    row = benchmark.layer_table(model, 64, 2, steps=3, warmup=1)[0]
    assert row["overhead_ms"] > 0  # the empty step's call, timed in the same rounds
    for impl in ("tensorflow", "auto"):
        assert row["net_%s_ms" % impl] == pytest.approx(row["%s_ms" % impl]
                                                         - row["overhead_ms"])
    assert row["net_speed"] == pytest.approx(row["net_tensorflow_ms"] / row["net_auto_ms"])


def test_kernel_variants_are_timed_beside_auto_and_need_layers(capsys):
    from tensorflow import keras
    inputs = keras.Input((16, 16, 3))  # an image, as group_conv_layer_shapes feeds
    x = keras.layers.Conv2D(32, 1)(inputs)
    x = L.GroupConv2D(32, 3, group_size=16)(x)                  # Winograd on AVX-512
    outputs = L.GroupConv2D(32, 5, strides=2, group_size=16)(x)  # direct blocks
    model = keras.Model(inputs, outputs)
    names = ("EFFICIENTNET_IPU_WINOGRAD", "EFFICIENTNET_IPU_AVX2_ONLY")
    before = [os.environ.get(name) for name in names]
    rows = benchmark.layer_table(model, 16, 2, steps=2, warmup=1, kernel_variants=True)
    assert [os.environ.get(name) for name in names] == before  # each variant's restored
    assert [r["shape"] for r in rows] == [(2, 16, 16, 32), (2, 16, 16, 32)]
    for row in rows:
        assert set(row["variants"]) == set(benchmark.KERNEL_VARIANTS)
        for ms, speed in row["variants"].values():
            assert ms > 0 and len(speed) == 5 and speed[3] <= speed[0] <= speed[4]
    assert "variants" not in benchmark.layer_table(model, 16, 2, steps=1, warmup=0)[0]
    with pytest.raises(SystemExit):
        benchmark.main(["--conv", "--kernel-variants"])
    assert "--kernel-variants goes with --layers" in capsys.readouterr().err


@pytest.mark.slow
def test_serving_benchmark_times_every_export_and_the_conv_forms(capsys):
    """``--serving``: each model exported (portable and, where the CPU ops load, with them)
    and keras.applications' B0, loaded and timed; then the G16 convolutions' forms."""
    from efficientnet_ipu import kernels
    assert benchmark.main(["--serving", "--sizes=b0", "--group-sizes=16", "--norms=ln_pn",
                           "--resolutions=32", "--batch=2", "--steps=2", "--warmup=1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  G16-ln_pn")
            or line.startswith("  keras.applications")]
    labels = [row[0] for row in rows]
    assert labels == (["G16-ln_pn", "G16-ln_pn+ops"] if kernels.available()
                      else ["G16-ln_pn"]) + ["keras.applications"]
    for row in rows:
        assert float(row[3]) > 0 and float(row[4]) > 0     # latency ms, images/s
    assert rows[-1][5] == "1.000x"                            # keras against itself
    forms = [line for line in out.splitlines() if line.startswith("  summed over")]
    assert len(forms) == 4   # batch 1 and 2, grouped and split
