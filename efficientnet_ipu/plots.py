"""Efficiency plots in the style of paper 001 Figures 1, 4, 5 and 6.

Accuracy (top-1 %) against parameters, FLOPs (multiply-adds at the test resolution) and
measured throughput, one colour per configuration G-M-R (group size, norm, training
resolution), with each configuration's Pareto front as a line.

    python -m efficientnet_ipu.plots --results=results/accuracy.csv \
        --benchmark=benchmark.csv --source=paper001_table4 --out=plots/table4.png
    python -m efficientnet_ipu.plots --add-result=WORKDIR   # append our own evaluation run

``results/accuracy.csv`` starts with paper 001's Tables 2-5; ``--add-result`` appends the
``eval_results.json`` of a training workdir (source "ours"). Throughput comes from the
CSV written by ``python -m efficientnet_ipu.benchmark`` (matched on size, G, norm and
training resolution); without it the throughput panel is left out.
"""
import argparse
import csv
import json
import os
import sys

COLUMNS = ("source", "size", "G", "E", "norm", "train_res", "test_res", "finetuned", "top1",
           "top1_std")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pareto_front(points):
    """Points (x, y) not dominated by another with smaller-or-equal x and higher y,
    sorted by x: the upper-left frontier."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def label(row):
    native = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456}
    resolution = "Native" if int(row["train_res"]) >= native.get(row["size"], 0) else "Half"
    norm = {"gn": "GN", "ln_pn": "LN+PN", "bn": "BN"}.get(row["norm"], row["norm"])
    return "G%s-%s-%s" % (row["G"], norm, resolution)


def model_costs(rows):
    """{(size, G, E, norm, test_res): (params in M, MACs in B)} counted with our models."""
    from efficientnet_ipu import analysis, models
    costs, built = {}, {}
    for row in rows:
        key = (row["size"], int(row["G"]), int(row["E"]), row["norm"], int(row["test_res"]))
        if key in costs:
            continue
        model_key = key[:4]
        if model_key not in built:
            built[model_key] = models.EfficientNet(key[0], group_size=key[1],
                                                   expansion_ratio=key[2], norm=key[3])
        model = built[model_key]
        costs[key] = (analysis.count_params(model) / 1e6,
                      analysis.count_macs(model, key[4]) / 1e9)
    return costs


def plot(rows, out, benchmark_rows=(), title=""):
    """Write a PNG with accuracy vs parameters, FLOPs and (if given) training throughput.

    Returns the number of panels drawn. Raises ValueError if ``rows`` is empty.
    """
    if not rows:
        raise ValueError("no accuracy rows to plot (check --source)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    costs = model_costs(rows)
    throughput = {(b["size"], str(b["G"]), b["norm"], str(b["res"])): float(b["train_img_s"])
                  for b in benchmark_rows if b.get("train_img_s")}
    panels = [("Parameters (M)", lambda r, c: c[0]), ("FLOPs (B multiply-adds)",
                                                      lambda r, c: c[1])]
    if throughput:
        panels.append(("Training throughput (images/s, this machine)",
                       lambda r, c: throughput.get((r["size"], r["G"], r["norm"],
                                                    r["train_res"]))))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5))
    axes = list(axes) if len(panels) > 1 else [axes]
    groups = {}
    for row in rows:
        groups.setdefault(label(row), []).append(row)
    for ax, (xlabel, x_of) in zip(axes, panels):
        for name, group in sorted(groups.items()):
            points = []
            for row in group:
                key = (row["size"], int(row["G"]), int(row["E"]), row["norm"],
                       int(row["test_res"]))
                x = x_of(row, costs[key])
                if x is not None:
                    points.append((x, float(row["top1"])))
            if not points:
                continue
            line = ax.plot(*zip(*pareto_front(points)), "-", alpha=0.7)[0]
            ax.plot(*zip(*points), "o", color=line.get_color(), label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ImageNet top-1 (%)")
        ax.grid(alpha=0.3)
        if xlabel.startswith("Training"):
            ax.invert_xaxis()  # faster is better: the front stays upper-left
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return len(panels)


def result_row(workdir):
    """An accuracy row (source "ours") from a training workdir's config and evaluation."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(workdir, "eval_results.json")) as f:
        result = json.load(f)
    from efficientnet_ipu import models
    m = config["model"]
    g = m["group_size"]
    e = m["expansion_ratio"] or models.default_expansion_ratio(g)
    return dict(source="ours", size=m["size"], G=g, E=e, norm=m["norm"],
                train_res=config["image_size"]["train"], test_res=config["image_size"]["eval"],
                finetuned=0, top1=round(100 * result["top1"], 2), top1_std="")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/accuracy.csv")
    parser.add_argument("--benchmark", default="", help="CSV from efficientnet_ipu.benchmark")
    parser.add_argument("--source", default="paper001_table4",
                        help="which rows to plot (the 'source' column), e.g. ours")
    parser.add_argument("--out", default="plots/efficiency.png")
    parser.add_argument("--add-result", default="", help="workdir whose result to append")
    args = parser.parse_args(argv)
    if args.add_result:
        row = result_row(args.add_result)
        with open(args.results, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(row)
        print("appended %s to %s" % (row, args.results))
        return 0
    rows = [r for r in read_csv(args.results) if r["source"] == args.source]
    bench = read_csv(args.benchmark) if args.benchmark else []
    panels = plot(rows, args.out, bench, title=args.source)
    print("wrote %s (%d panels, %d points)" % (args.out, panels, len(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
