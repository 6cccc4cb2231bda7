"""Figures of the analysis tools, as PNG (matplotlib, Agg backend).

- ``plot_random_nets``: paper 002 Figure 2 (top row): the four power terms against depth,
  one panel per norm, as stacked fractions;
- ``plot_power_epochs``: the same plot for a trained model, one panel per saved epoch
  (paper 002 Appendix A.2.2 for ResNet-50);
- ``plot_signal``: signal propagation plots (paper 003; Brock et al., 2021): average
  channel squared mean and variance against depth, for activations, weights and gradients,
  one line per epoch.
"""
import os

from efficientnet_ipu.analysis.power import TERMS

TERM_LABELS = {
    "channel_mean_sq": "mu_c[y]^2 (dataset scale)",
    "instance_mean_var": "sigma_c[mu_x,c[y]]^2 (instance means vary)",
    "instance_std_sq": "mu_c[sigma_x,c[y]]^2",
    "instance_std_var": "sigma_c[sigma_x,c[y]]^2 (instance stds vary)",
}
TERM_COLOURS = ("#b2182b", "#ef8a62", "#67a9cf", "#2166ac")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out, dpi=90):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)


def _stacked(ax, fractions, title):
    """Stacked fractions of the four terms against depth on ``ax``."""
    depth = list(range(1, len(fractions) + 1))
    ax.stackplot(depth, [[f[t] for f in fractions] for t in TERMS], colors=TERM_COLOURS,
                 labels=[TERM_LABELS[t] for t in TERMS])
    ax.set_title(title)
    ax.set_xlabel("depth")
    ax.set_ylim(0, 1)
    ax.set_xlim(1, max(depth))


def plot_random_nets(results, out):
    """``results``: {norm: ``random_net`` rows}. One panel per norm: the fraction of the
    power of each term against depth. Writes ``out`` (PNG)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4),
                             sharey=True)
    axes = axes if len(results) > 1 else [axes]
    for ax, (norm, rows) in zip(axes, results.items()):
        _stacked(ax, [r["fractions"] for r in rows], norm.upper().replace("_", "+"))
    axes[0].set_ylabel("fraction of the power of y")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4,
               fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _save(fig, out)
    plt.close(fig)


def plot_power_epochs(by_epoch, out, title=""):
    """``by_epoch``: {epoch: ``power_decomposition`` rows}. One panel per epoch (at most
    6, spread over the run): the fraction of each term against the depth of the
    normalized step. Writes ``out`` (PNG)."""
    plt = _pyplot()
    epochs = sorted(by_epoch)
    if len(epochs) > 6:
        epochs = [epochs[round(i * (len(epochs) - 1) / 5)] for i in range(6)]
    fig, axes = plt.subplots(1, len(epochs), figsize=(3.2 * len(epochs), 3.4), sharey=True)
    axes = axes if len(epochs) > 1 else [axes]
    for ax, epoch in zip(axes, epochs):
        _stacked(ax, [r["fractions"] for r in by_epoch[epoch]],
                 "epoch %d" % epoch if epoch else "initialization")
    axes[0].set_ylabel("fraction of the power of y")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4,
               fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _save(fig, out)
    plt.close(fig)


def plot_signal(rows, out, title=""):
    """Signal propagation plots from ``signal.signal_propagation`` rows (any epochs): a
    2 x 3 grid, average channel squared mean (top) and average channel variance (bottom)
    against depth, for activations, weights and gradients, one line per epoch (log
    scale). Writes ``out`` (PNG)."""
    from efficientnet_ipu.analysis.signal import KINDS, STATISTICS
    plt = _pyplot()
    epochs = sorted({r["epoch"] for r in rows})
    colours = plt.get_cmap("viridis")
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for col, kind in enumerate(KINDS):
        for row, stat in enumerate(STATISTICS):
            ax = axes[row][col]
            # Many epochs: the legend names the first, the last and three in between.
            named = {epochs[round(k * (len(epochs) - 1) / 4)] for k in range(5)}
            for i, epoch in enumerate(epochs):
                points = sorted((r["depth"], r[stat]) for r in rows
                                if r["kind"] == kind and r["epoch"] == epoch)
                if points:
                    ax.plot(*zip(*points), color=colours(i / max(len(epochs) - 1, 1)),
                            label="epoch %d" % epoch if epoch in named else None)
            ax.set_yscale("log")
            ax.set_title("%s: %s" % (kind, "avg channel squared mean" if row == 0
                                     else "avg channel variance"), fontsize=10)
            ax.set_xlabel("depth (%s)" % ("stem, blocks, top" if kind == "activations"
                                          else "kernels in order"))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out, dpi=72)
    plt.close(fig)
