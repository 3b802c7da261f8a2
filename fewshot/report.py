"""Tables (CSV + Markdown, with bootstrap confidence intervals) and error-vs-support-size plots."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics import Metric  # noqa: E402


def summarise(per_task: pd.DataFrame, metric: Metric, level: float = 0.95) -> pd.DataFrame:
    """One row per (method, support size): aggregate over all test tasks and seeds, its bootstrap CI, the
    number of (task, seed) values and how many diverged, and the learning rate / steps chosen on validation
    tasks."""
    rows = []
    for (method, k), g in per_task.groupby(["method", "support_size"], sort=False):
        lo, hi = metric.bootstrap_ci(g["value"].to_numpy(), level)
        values = g["value"].to_numpy(dtype=float)
        rows.append({"method": method, "support_size": int(k), metric.name: metric.reduce(values),
                     "ci_low": lo, "ci_high": hi, "n": len(g), "diverged": int((~np.isfinite(values)).sum()), "lr": ", ".join(f"{v:g}" for v in sorted(set(g["lr"]))),
                     "steps": ", ".join(str(int(v)) for v in sorted(set(g["steps"])))})
    return pd.DataFrame(rows)


def markdown_table(summary: pd.DataFrame, metric: Metric, level: float = 0.95) -> str:
    """Methods as rows, support sizes as columns, cells ``value [ci_low, ci_high]``; best per column in bold."""
    sizes = sorted(summary["support_size"].unique())
    best = {}
    for k in sizes:
        col = summary[summary["support_size"] == k].set_index("method")[metric.name]
        best[k] = col.idxmax() if metric.higher_is_better else col.idxmin()
    head = "| method | " + " | ".join(f"k={k}" for k in sizes) + " |"
    lines = [f"{metric.aggregate} {metric.name} over test tasks, [{int(level * 100)}% bootstrap CI]", "", head,
             "|---" * (len(sizes) + 1) + "|"]
    for method in summary["method"].unique():
        cells = []
        for k in sizes:
            r = summary[(summary["method"] == method) & (summary["support_size"] == k)]
            if r.empty:
                cells.append("–")
                continue
            r = r.iloc[0]
            cell = f"{r[metric.name]:.4g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
            if r["diverged"]:
                cell += f" ({r['diverged']}/{r['n']} diverged)"
            cells.append(f"**{cell}**" if best[k] == method else cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_support_curve(summary: pd.DataFrame, metric: Metric, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, g in summary.groupby("method", sort=False):
        g = g[np.isfinite(g[metric.name])].sort_values("support_size")
        y = g[metric.name]
        upper = (g["ci_high"] - y).where(np.isfinite(g["ci_high"]), 0.0)  # unbounded when some tasks diverged
        ax.errorbar(g["support_size"], y, yerr=[y - g["ci_low"], upper], marker="o", capsize=3,
                    label=method, lw=2.5 if method == "subgd" else 1.2)
    ax.set_xscale("log")
    if metric.name == "mse":
        ax.set_yscale("log")
    ax.set_xlabel("support size")
    ax.set_ylabel(f"{metric.aggregate} {metric.name}")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(per_task: pd.DataFrame, metric: Metric, out_dir: str | Path, title: str) -> pd.DataFrame:
    """Write ``summary.csv``, ``summary.md`` and ``support_curve.png`` into ``out_dir``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(per_task, metric)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(f"# {title}\n\n" + markdown_table(summary, metric))
    plot_support_curve(summary, metric, out / "support_curve.png", title)
    return summary
