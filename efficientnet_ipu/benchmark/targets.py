"""The speed targets: one table of goals with their source, and the rows that judge a
run against them (paired per-round ratios with 95 % confidence intervals)."""
import csv
import os

import numpy as np

from efficientnet_ipu import models
from efficientnet_ipu.benchmark.timing import median_ci, paired_ratio

# The speed targets this benchmark checks: name -> (goal, at_most, source). Speeds are
# ratios of images/s (at least the goal); costs are ratio - 1 (at most the goal).
TARGETS = {
    "conv": (0.75, False, "a G16 group convolution at >= 75 % of the dense 3x3 "
                          "convolution's GFLOP/s on CPU (the project's CPU kernels goal; "
                          "paper 001 sec. 3.1 and App. A: group convs of G16 keep "
                          "arithmetic intensity)"),
    "keras": (1.0, False, "G1-BN at least as fast as keras.applications' EfficientNet "
                          "(the same model)"),
    "g16_vs_g1": (1.0, False, "G16 at least as fast as G1 at the same norm (paper 001 "
                              "sec. 3.1, Fig. 6: G16-E4 matches G1-E6's FLOPs)"),
    "lnpn_cost": (0.05, True, "LN+PN at most 5 % slower than GN (paper 001 sec. 3.2: proxy "
                              "norm's cost is small)"),
    "half_res": (1.9, False, "half-resolution training at least 1.9x the native "
                             "resolution's images/s (paper 001 sec. 3.3, Table 1: about "
                             "half the pixels)"),
    "variant": (1.0, False, "this project's ops at least as fast as TensorFlow's "
                            "(--compare-conv, --compare-proxy, --compare-norm-ops, "
                            "--compare-in-flight)"),
}


def goal(name):
    """(goal, at_most) of the target ``name`` in ``TARGETS``."""
    return TARGETS[name][:2]



def _target(target, stats, goal, at_most=False):
    """One targets-table row from (median, q25, q75, ci_low, ci_high) (``paired_ratio``):
    met is "yes" when the whole 95 % confidence interval of the median meets the goal,
    "no" when the whole interval misses it, else "within noise". Costs (``at_most``) must
    be at most the goal, speeds at least. The quartiles are reported as the spread of
    single rounds."""
    value, q25, q75, low, high = stats
    if at_most:
        met = "yes" if high <= goal else "no" if low > goal else "within noise"
    else:
        met = "yes" if low >= goal else "no" if high < goal else "within noise"
    return dict(target=target, value=value, q25=q25, q75=q75, ci_low=low, ci_high=high,
                goal=("<= " if at_most else ">= ") + "%g" % goal, met=met)


def conv_target_rows(conv_rows):
    """The GroupConv2D G16 target (``TARGETS["conv"]``), one row per G16 variant of
    ``conv_table``'s rows (see ``_target`` for the row's fields)."""
    return [_target("%s vs dense conv, GFLOP/s" % row["case"],
                    (row["of_dense"],) + tuple(row["of_dense_iqr"]) + tuple(row["of_dense_ci"]),
                    *goal("conv"))
            for row in conv_rows[1:] if "G16" in row["case"]]


def _model_label(model):
    """"keras" or e.g. "G16-gn" for a ``bench_models`` key without its resolution."""
    return "keras" if model == ("keras",) else "G%d-%s" % model


def target_rows(size, resolutions, train_times):
    """The model speed targets (``TARGETS``) from one size's interleaved training times.

    Args:
      size: "b0".."b7"; resolutions: the pixel sizes timed (native and half are matched
        with ``models.SIZES`` / ``models.HALF_RESOLUTION``); train_times: from
        ``bench_models``, keyed (resolution, "keras") or (resolution, G, norm).

    Returns:
      list of dicts (``_target``): target, value (median over rounds of the paired
      ratio), q25, q75, ci_low, ci_high, goal, met. Costs are ratio - 1.
    """
    rows = []

    def add(target, stats, name):
        rows.append(_target(target, stats, *goal(name)))

    def speed(fast, slow):  # speed of ``fast`` over ``slow``
        return paired_ratio(train_times[slow], train_times[fast])

    for res in resolutions:
        if (res, "keras") in train_times and (res, 1, "bn") in train_times:
            add("G1-BN vs keras %s, %d px" % (size.upper(), res),
                speed((res, 1, "bn"), (res, "keras")), "keras")
        for norm in ("bn", "gn", "ln_pn"):
            if (res, 1, norm) in train_times and (res, 16, norm) in train_times:
                add("G16 vs G1, %s, %d px" % (norm, res),
                    speed((res, 16, norm), (res, 1, norm)), "g16_vs_g1")
        if (res, 16, "gn") in train_times and (res, 16, "ln_pn") in train_times:
            cost = paired_ratio(train_times[(res, 16, "ln_pn")], train_times[(res, 16, "gn")])
            add("LN+PN cost over GN, G16, %d px" % res, tuple(c - 1 for c in cost),
                "lnpn_cost")
        for g in (1, 16):  # --compare-conv: our kernels vs TensorFlow's
            for norm in ("bn", "gn", "ln_pn"):
                if (res, g, norm + "/tf-conv") in train_times and (res, g, norm) in train_times:
                    add("G%d CPU kernels vs TF convs, %s, %d px" % (g, norm, res),
                        speed((res, g, norm), (res, g, norm + "/tf-conv")), "variant")
        for g in (1, 16):  # --compare-proxy: the fused proxy statistics vs TensorFlow ops
            for norm in ("gn_pn", "ln_pn"):
                if (res, g, norm + "/tf-proxy") in train_times and (res, g, norm) in train_times:
                    add("fused proxy stats vs TF ops, G%d %s, %d px" % (g, norm, res),
                        speed((res, g, norm), (res, g, norm + "/tf-proxy")), "variant")
        for key in sorted(k for k in train_times  # --compare-norm-ops: ours vs TF ops
                          if k[0] == res and str(k[-1]).endswith("/tf-norm")):
            base = key[:2] + (key[2][:-len("/tf-norm")],)
            if base in train_times:
                add("fused norm ops vs TF ops, G%d %s, %d px" % (key[1], base[2], res),
                    speed(base, key), "variant")
        for key in sorted(k for k in train_times  # --compare-in-flight
                          if k[0] == res and str(k[-1]).endswith("/1-in-flight")):
            base = key[:2] + (key[2][:-len("/1-in-flight")],)
            if base in train_times:
                add("micro-batches in flight vs 1, G%d %s, %d px" % (key[1], base[2], res),
                    speed(base, key), "variant")
    native, half = models.SIZES[size][2], models.HALF_RESOLUTION[size]
    for key in train_times:
        half_key = (half,) + key[1:]
        if key[0] == native and half_key in train_times:
            add("half-res speed-up, %s, %d vs %d px" % (_model_label(key[1:]), half, native),
                speed(half_key, key), "half_res")
    return rows


def fixed_cost_rows(size, train_times):
    """Per-step fixed cost of each model timed at three or more resolutions: a least-squares
    fit, per round, of the training step time t = F + a * pixels (pixels = H * W) across
    the resolutions, as the medians over rounds with 95 % confidence intervals
    (``median_ci``). F is the part of a step that does not shrink with the image (weight
    updates, [N, C] and weight-sized ops, per-op start-up), and it bounds the
    half-resolution speed-up even when all the rest scales with the pixels:
    bound = (F + a * native^2) / (F + a * half^2), with ``models.SIZES`` /
    ``models.HALF_RESOLUTION``'s native and half sizes.

    Args:
      size: "b0".."b7"; train_times: from ``bench_models``, keyed (resolution, ...), each
        a list of per-round step times (s) from one ``interleaved_times`` call.

    Returns:
      list of dicts: model (the key without its resolution), resolutions, fixed_ms (F),
      fixed_ci (low, high), ms_per_kpx (a, ms per 1000 pixels), bound, bound_ci.
    """
    by_model = {}
    for key, times in train_times.items():
        by_model.setdefault(key[1:], {})[key[0]] = np.asarray(times, np.float64)
    native, half = models.SIZES[size][2], models.HALF_RESOLUTION[size]
    rows = []
    for model, by_res in by_model.items():
        if len(by_res) < 3:
            continue
        res = sorted(by_res)
        pixels = np.array([r * r for r in res], np.float64)
        design = np.stack([np.ones_like(pixels), pixels], axis=1)            # [R, 2]
        times = np.stack([by_res[r] for r in res])                           # [R, rounds]
        fixed, slope = np.linalg.lstsq(design, times, rcond=None)[0]         # [rounds] each
        bound = (fixed + slope * native ** 2) / (fixed + slope * half ** 2)
        rows.append(dict(model=model, resolutions=res,
                         fixed_ms=float(np.median(fixed)) * 1e3,
                         fixed_ci=tuple(v * 1e3 for v in median_ci(fixed)),
                         ms_per_kpx=float(np.median(slope)) * 1e6,
                         bound=float(np.median(bound)), bound_ci=median_ci(bound)))
    return rows


def print_targets(targets):
    """Prints ``_target`` rows, one line each: the value, its 95 % CI, the single rounds'
    IQR, the goal and whether it is met."""
    for t in targets:
        print("  %-52s %7.3f  CI [%.3f, %.3f]  IQR [%.3f, %.3f]  goal %-7s met: %s" % (
            t["target"], t["value"], t["ci_low"], t["ci_high"], t["q25"], t["q75"],
            t["goal"], t["met"]))


ROUND_FIELDS = ("size", "G", "norm", "res", "round", "seconds")


def round_rows(size, train_times):
    """One dict per timed round of every model in ``train_times`` (keyed as from
    ``bench_models``): size, G ("" for keras.applications), norm ("keras" for it), res
    (px), round (0-based, in the order timed; entries with the same round number were
    timed in the same round) and seconds (the training step's wall time)."""
    rows = []
    for key, times in train_times.items():
        g, norm = ("", "keras") if key[1:] == ("keras",) else key[1:]
        rows += [dict(size=size, G=g, norm=norm, res=key[0], round=i, seconds=float(t))
                 for i, t in enumerate(times)]
    return rows


def pooled_round_times(paths):
    """Training step times of several runs' ``<csv>_rounds.csv`` files (``round_rows``),
    pooled: {size: {key: seconds}} with keys as ``bench_models``'s, each list the runs'
    rounds one run after another, so that the entries of one round stay paired. Only the
    models timed in every run are kept.

    Raises: ValueError naming the file if one is missing, lacks a column of
    ``ROUND_FIELDS``, or times its models in unequal numbers of rounds."""
    runs = []
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError("--pool-rounds: no such file %r" % path)
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(ROUND_FIELDS) - set(reader.fieldnames or ())
            if missing:
                raise ValueError("--pool-rounds: %s lacks the column(s) %s (expected %s)" % (
                    path, ", ".join(sorted(missing)), ", ".join(ROUND_FIELDS)))
            run = {}
            for row in reader:
                res = int(row["res"])
                key = (res, "keras") if row["norm"] == "keras" else (
                    res, int(row["G"]), row["norm"])
                run.setdefault(row["size"], {}).setdefault(key, {})[int(row["round"])] = (
                    float(row["seconds"]))
        for size, by_key in run.items():
            counts = {len(r) for r in by_key.values()}
            if len(counts) != 1:
                raise ValueError("--pool-rounds: %s times the %s models in unequal numbers "
                                 "of rounds (%s)" % (path, size, sorted(counts)))
        runs.append({size: {key: [r[i] for i in sorted(r)] for key, r in by_key.items()}
                     for size, by_key in run.items()})
    pooled = {}
    for size in set.intersection(*(set(run) for run in runs)):
        keys = set.intersection(*(set(run[size]) for run in runs))
        pooled[size] = {key: [t for run in runs for t in run[size][key]] for key in keys}
    return pooled
