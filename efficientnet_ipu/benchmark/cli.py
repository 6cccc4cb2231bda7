"""The command line of ``python -m efficientnet_ipu.benchmark``."""
import argparse
import csv
import os
import sys

from tensorflow import keras
import numpy as np
import tensorflow as tf

from efficientnet_ipu import analysis, models
from efficientnet_ipu import layers as L
from efficientnet_ipu import config as config_lib
from efficientnet_ipu.benchmark.entries import (OPTIMIZERS, bench_models,
                                                keras_applications_model, optimizer_table,
                                                pipeline_images_per_second)
from efficientnet_ipu.benchmark.layer_tables import (CONV_SHAPE, block_table,
                                                     conv_table, layer_table, norm_table)
from efficientnet_ipu.benchmark.targets import (ROUND_FIELDS, conv_target_rows,
                                                fixed_cost_rows, pooled_round_times,
                                                print_targets, round_rows, target_rows,
                                                _model_label)
from efficientnet_ipu.benchmark.timing import paired_ratio


def parse_list(text, cast=str):
    return [cast(v) for v in text.split(",") if v]


def resolve_resolutions(size, resolutions):
    out = []
    for r in resolutions:
        if r == "native":
            out.append(models.SIZES[size][2])
        elif r == "half":
            out.append(models.HALF_RESOLUTION[size])
        else:
            out.append(int(r))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="b0")
    parser.add_argument("--group-sizes", default="1,16")
    parser.add_argument("--norms", default="bn,gn,ln_pn")
    parser.add_argument("--resolutions", default="native",
                        help="pixels, or 'native'/'half' (paper 001 Table 1)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--modes", default="train,inference")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-keras-baseline", action="store_true")
    parser.add_argument("--compare-unfolded", action="store_true",
                        help="also time each GN/LN/IN+PN model without the proxy-norm "
                             "folding (norm shown as e.g. ln_pn/unfolded)")
    parser.add_argument("--compare-conv", action="store_true",
                        help="also time each G1 and G16 model with "
                             "kernels.override(conv='tensorflow') (TensorFlow's convolutions and "
                             "gradients instead "
                             "of the CPU kernels; norm shown as e.g. bn/tf-conv)")
    parser.add_argument("--compare-proxy", action="store_true",
                        help="also time each proxy-norm model with "
                             "kernels.override(proxy=False) (the proxy statistics as TensorFlow ops "
                             "instead of "
                             "the fused CPU op; norm shown as e.g. ln_pn/tf-proxy)")
    parser.add_argument("--compare-norm-ops", action="store_true",
                        help="also time each model with the normalization, statistics and "
                             "squeeze-excite-gate ops of the CPU library traced as "
                             "TensorFlow ops (kernels.override(norm_ops=False); norm shown as e.g. "
                             "gn/tf-norm)")
    parser.add_argument("--optimizer", default="rmsprop", choices=OPTIMIZERS,
                        help="the update in the timed training step (make_optimizer); "
                             "rmsprop is the training program's")
    parser.add_argument("--gradient-accumulation", type=int, default=1,
                        help="micro-batches of --batch images per training step (one "
                             "optimizer update), as config.train.gradient_accumulation")
    parser.add_argument("--micro-batches-in-flight", type=int,
                        default=config_lib.base_config().train.micro_batches_in_flight,
                        help="micro-batches computed at the same time within a step, as "
                             "config.train.micro_batches_in_flight")
    parser.add_argument("--compare-in-flight", action="store_true",
                        help="with --gradient-accumulation >= 2, also time each model with "
                             "one micro-batch in flight (norm shown as e.g. gn/1-in-flight)")
    parser.add_argument("--optimizers", action="store_true",
                        help="only the optimizer table: the first model's training step "
                             "with each of %s" % ", ".join(OPTIMIZERS))
    parser.add_argument("--conv", action="store_true", help="only the convolution table")
    parser.add_argument("--layers", action="store_true",
                        help="only the per-layer table: forward + backward of each "
                             "GroupConv2D shape of the first size and group size at the "
                             "first resolution, TensorFlow's convolutions against 'auto'")
    parser.add_argument("--kernel-variants", action="store_true",
                        help="with --layers, also time auto's kernels built as their direct "
                             "AVX-512 blocks (no Winograd) and as their AVX2 blocks, in the "
                             "same rounds (KERNEL_VARIANTS)")
    parser.add_argument("--norm-layers", action="store_true",
                        help="only the normalization table (ours vs the baseline)")
    parser.add_argument("--pipeline", default="",
                        help="dataset whose training input pipeline to time, e.g. "
                             "image_folder:../shared/data/imagenette2_224")
    parser.add_argument("--pipeline-split", default="train")
    parser.add_argument("--serving", action="store_true",
                        help="only the exported SavedModels' serving signature: batch-1 "
                             "latency and --batch images/s of each --group-sizes x --norms "
                             "model against keras.applications', --steps rounds, then each "
                             "group convolution's TensorFlow-ops forms (benchmark.serving)")
    parser.add_argument("--csv", default="benchmark.csv")
    parser.add_argument("--pool-rounds", default="",
                        help="only the model speed targets of earlier runs' "
                             "<csv>_rounds.csv files (comma-separated), their rounds pooled "
                             "(pooled_round_times); times nothing")
    args = parser.parse_args(argv)
    for flag in ("batch", "gradient_accumulation", "micro_batches_in_flight"):
        if getattr(args, flag) < 1:
            parser.error("--%s must be a positive integer" % flag.replace("_", "-"))
    if args.kernel_variants and not args.layers:
        parser.error("--kernel-variants goes with --layers (it compares the per-layer "
                     "kernels)")
    if args.compare_in_flight and args.gradient_accumulation < 2:
        parser.error("--compare-in-flight needs --gradient-accumulation >= 2 (one micro-batch "
                     "per step has nothing to overlap)")
    sizes = parse_list(args.sizes)
    for size in sizes:
        models.check_size(size)
    norms = parse_list(args.norms)
    for norm in norms:
        L.parse_norm(norm)
    group_sizes = parse_list(args.group_sizes, int)
    if args.pool_rounds:
        try:
            pooled = pooled_round_times(parse_list(args.pool_rounds))
        except ValueError as e:
            parser.error(str(e))
        for size, times in sorted(pooled.items()):
            n_rounds = len(next(iter(times.values()))) if times else 0
            print("%s: %d models, %d rounds pooled from %s" % (
                size.upper(), len(times), n_rounds, args.pool_rounds))
            print_targets(target_rows(size, sorted({key[0] for key in times}), times))
        return 0

    print("TensorFlow %s, Keras %s, %d CPU threads" % (
        tf.__version__, getattr(keras, "__version__", "2"), os.cpu_count()))
    print("Training step: %s update, %d micro-batch(es) of %d per step, up to %d in flight"
          % (args.optimizer, args.gradient_accumulation, args.batch,
             args.micro_batches_in_flight))
    if args.norm_layers:
        for title, table, base in (
                ("Normalization on [32, 56, 56, 96], forward + backward",
                 norm_table(args.steps * 4), "GN4 reshape+moments (baseline)"),
                ("MBConv block on [32, 56, 56, 24], G16, E4, forward + backward",
                 block_table(args.steps * 4), "MBConv LN+PN unfolded")):
            print("%s (medians of %d interleaved rounds; speed over %s's in the same round, "
                  "95 %% CI):" % (title, args.steps * 4, base))
            for name, times in table.items():
                ratio = paired_ratio(table[base], times)
                print("  %-36s %8.2f ms  %5.3fx [%.3f, %.3f]" % (
                    name, 1e3 * np.median(times), ratio[0], ratio[3], ratio[4]))
        return 0
    if args.optimizers:
        size, g, norm = sizes[0], group_sizes[0], norms[0]
        resolution = int(resolve_resolutions(size, [parse_list(args.resolutions)[0]])[0])
        model = models.EfficientNet(size, group_size=g, norm=norm,
                                    input_shape=(resolution, resolution, 3))
        print("Training step of %s-G%d %s at %d px, batch %d, %d variables, by optimizer "
              "(medians of %d interleaved rounds, 95 %% CIs):" % (
                  size.upper(), g, norm, resolution, args.batch,
                  len(model.trainable_variables), args.steps))
        for r in optimizer_table(model, args.batch, resolution, args.steps, args.warmup):
            print("  %-14s %8.1f ms  %+7.1f ms over sgd [%.1f, %.1f]  %5.3fx keras-rmsprop's "
                  "speed [%.3f, %.3f]" % (r["optimizer"], r["ms"], r["over_sgd_ms"],
                                          r["over_sgd_ci"][0], r["over_sgd_ci"][1],
                                          r["vs_keras"][0], r["vs_keras"][3],
                                          r["vs_keras"][4]))
        return 0
    if args.layers:
        size, g = sizes[0], group_sizes[0]
        resolution = int(resolve_resolutions(size, [parse_list(args.resolutions)[0]])[0])
        model = models.EfficientNet(size, group_size=g, norm=norms[0],
                                    input_shape=(resolution, resolution, 3))
        print("GroupConv2D layers of %s-G%d at %d px, batch %d, forward + backward "
              "(medians of %d interleaved rounds, less the empty step's call overhead; "
              "auto's speed over tensorflow's in wall time, 95 %% CI, and net of the "
              "overhead):" % (size.upper(), g, resolution, args.batch, args.steps))
        totals = {"tensorflow": 0.0, "auto": 0.0}
        for r in layer_table(model, resolution, args.batch, args.steps, args.warmup,
                             kernel_variants=args.kernel_variants):
            totals["tensorflow"] += r["count"] * r["net_tensorflow_ms"]
            totals["auto"] += r["count"] * r["net_auto_ms"]
            line = ("  %-20s %dx%d s%d G%-2d x%d  tensorflow %7.2f ms  auto %7.2f ms  "
                    "(overhead %.2f ms)  %5.3fx [%.3f, %.3f], net %5.3fx"
                    % (r["shape"], r["kernel_size"], r["kernel_size"], r["stride"],
                       r["group_size"], r["count"], r["net_tensorflow_ms"], r["net_auto_ms"],
                       r["overhead_ms"], r["speed"][0], r["speed"][3], r["speed"][4],
                       r["net_speed"]))
            for name, (ms, speed) in r.get("variants", {}).items():
                totals[name] = totals.get(name, 0.0) + r["count"] * (ms - r["overhead_ms"])
                line += "  %s %7.2f ms (auto %5.3fx [%.3f, %.3f])" % (
                    name, ms - r["overhead_ms"], speed[0], speed[3], speed[4])
            print(line)
        print("  summed over the layers, net of the overhead: " + ", ".join(
            "%s %.1f ms" % item for item in totals.items()))
        return 0
    if args.serving:
        from efficientnet_ipu.benchmark import serving
        specs = [(g, norm) for g in group_sizes for norm in norms]
        for size in sizes:
            for resolution in resolve_resolutions(size, parse_list(args.resolutions)):
                serving.print_serving_rows(serving.serving_rows(
                    specs, size, int(resolution), args.batch, args.steps, args.warmup))
                for g in group_sizes:
                    if g > 1:
                        serving.print_conv_form_rows(serving.conv_form_rows(
                            size, g, int(resolution), args.batch, args.steps, args.warmup))
        return 0
    if args.pipeline:
        rate = pipeline_images_per_second(args.pipeline, args.pipeline_split,
                                          int(resolve_resolutions(sizes[0], [
                                              parse_list(args.resolutions)[0]])[0]),
                                          args.batch, args.steps * 10, mixup=0.1, cutmix=0.9)
        print("Input pipeline on %s (%s): %.1f images/s on %d cores = %.1f images/s per core"
              % (args.pipeline, args.pipeline_split, rate, os.cpu_count(),
                 rate / os.cpu_count()))
        return 0
    print("Convolution %s, 3x3, forward + backward:" % (CONV_SHAPE,))
    conv_rows = conv_table(args.steps * 2, args.warmup)
    for row in conv_rows:
        print("  %-32s %8.2f ms %7.1f GFLOP/s %6.1f%% of dense (CI %.1f-%.1f%%, IQR "
              "%.1f-%.1f%%)" % (row["case"], row["ms"], row["gflops"], 100 * row["of_dense"],
                                100 * row["of_dense_ci"][0], 100 * row["of_dense_ci"][1],
                                100 * row["of_dense_iqr"][0], 100 * row["of_dense_iqr"][1]))
    if args.conv:
        return 0
    peak = conv_rows[0]["gflops"]
    policy = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
    keras.mixed_precision.set_global_policy(policy[args.precision])
    rows, targets = [], conv_target_rows(conv_rows)
    fixed_costs = []  # fixed_cost_rows of every size
    rounds = []  # round_rows of every size
    header = ("size", "G", "E", "norm", "res", "batch", "train_img_s", "infer_img_s",
              "latency_ms", "macs_m", "train_gflops", "of_peak", "vs_keras_train",
              "vs_keras_infer")
    print("\n" + " ".join("%12s" % h for h in header))
    for size in sizes:
        # Every model of this size at every resolution (and the keras.applications
        # baseline) is timed in the same interleaved rounds, so that their ratios (G16 vs
        # G1, LN+PN vs GN, half vs native resolution, ours vs keras) share the load.
        built = {}
        resolutions = resolve_resolutions(size, parse_list(args.resolutions))
        for resolution in resolutions:
            if not args.no_keras_baseline:
                built[(resolution, "keras")] = keras_applications_model(size, resolution)
            for g in group_sizes:
                for norm in norms:
                    built[(resolution, g, norm)] = models.EfficientNet(
                        size, group_size=g, norm=norm)
                    if args.compare_unfolded and norm.endswith("_pn") and norm != "bn_pn":
                        built[(resolution, g, norm + "/unfolded")] = models.EfficientNet(
                            size, group_size=g, norm=norm)
                    if args.compare_conv and g in (1, 16):  # the kernels serve these
                        built[(resolution, g, norm + "/tf-conv")] = models.EfficientNet(
                            size, group_size=g, norm=norm)
                    if args.compare_proxy and norm.endswith("_pn"):
                        built[(resolution, g, norm + "/tf-proxy")] = models.EfficientNet(
                            size, group_size=g, norm=norm)
                    if args.compare_in_flight:  # same model, one micro-batch in flight
                        built[(resolution, g, norm + "/1-in-flight")] = models.EfficientNet(
                            size, group_size=g, norm=norm)
                    if args.compare_norm_ops:  # same model, traced in override(norm_ops=False)
                        built[(resolution, g, norm + "/tf-norm")] = models.EfficientNet(
                            size, group_size=g, norm=norm)
        results, train_times = bench_models(built, args.batch, args)
        targets += target_rows(size, resolutions, train_times)
        fixed_costs += [dict(r, size=size) for r in fixed_cost_rows(size, train_times)]
        rounds += round_rows(size, train_times)
        for resolution in resolutions:
            baseline = results.get((resolution, "keras"), {})
            if baseline:
                print("  keras.applications EfficientNet%s at %d px: %s" % (
                    size.upper(), resolution,
                    ", ".join("%s %.2f" % kv for kv in sorted(baseline.items()))))
            for key, result in results.items():
                if key[0] != resolution or key[1] == "keras":
                    continue
                _, g, norm = key
                macs = analysis.count_macs(built[key], resolution)
                row = dict(size=size, G=g, E=models.default_expansion_ratio(g), norm=norm,
                           res=resolution, batch=args.batch, macs_m=macs / 1e6, **result)
                if "train_img_s" in result:
                    row["train_gflops"] = 3 * 2 * macs * result["train_img_s"] / 1e9
                    row["of_peak"] = row["train_gflops"] / peak
                for mode in ("train", "infer"):
                    metric = mode + "_img_s"
                    if metric in result and metric in baseline:
                        row["vs_keras_" + mode] = result[metric] / baseline[metric]
                rows.append(row)
                print(" ".join("%12s" % (("%.3g" % row[h]) if isinstance(row.get(h), float)
                                         else row.get(h, "")) for h in header))
                sys.stdout.flush()
        del built, results
        keras.backend.clear_session()
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header + (
            "precision", "dense_peak_gflops", "optimizer", "gradient_accumulation",
            "micro_batches_in_flight"))
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, precision=args.precision, dense_peak_gflops=peak,
                                 optimizer=args.optimizer,
                                 gradient_accumulation=args.gradient_accumulation,
                                 micro_batches_in_flight=args.micro_batches_in_flight))
    print("\nwrote %s" % args.csv)
    print("\nTargets (median over rounds of the paired ratio, its 95 % confidence interval, "
          "and the interquartile range of single rounds; met when the whole interval meets "
          "the goal):")
    print_targets(targets)
    targets_csv = os.path.splitext(args.csv)[0] + "_targets.csv"
    with open(targets_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("target", "value", "q25", "q75", "ci_low",
                                               "ci_high", "goal", "met"))
        writer.writeheader()
        writer.writerows(targets)
    print("wrote %s" % targets_csv)
    if rounds:
        rounds_csv = os.path.splitext(args.csv)[0] + "_rounds.csv"
        with open(rounds_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=ROUND_FIELDS)
            writer.writeheader()
            writer.writerows(rounds)
        print("wrote %s (every round's training step times; --pool-rounds pools runs)"
              % rounds_csv)
    if fixed_costs:
        print("\nPer-step fixed cost (fit per round of step time = F + a x pixels over the "
              "timed resolutions; medians with 95 % confidence intervals) and the "
              "half-resolution speed-up it allows when everything else scales with the "
              "pixels:")
    for r in fixed_costs:
        label = _model_label(r["model"])
        print("  %s %-22s F %6.1f ms  CI [%.1f, %.1f]  a %6.2f ms per 1000 px  "
              "bound %.3f  CI [%.3f, %.3f]  (%s px)" % (
                  r["size"].upper(), label, r["fixed_ms"], r["fixed_ci"][0], r["fixed_ci"][1],
                  r["ms_per_kpx"], r["bound"], r["bound_ci"][0], r["bound_ci"][1],
                  ", ".join(str(x) for x in r["resolutions"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
