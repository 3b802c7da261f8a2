"""Paper-style tables (target accuracy per dataset x selector, mean +- std over seeds) and a bar plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMN_ORDER = ["SourceOnly", "IWA", "IWV", "DEV", "SOR", "TMR", "TCR", "TMV", "TargetOracle"]


def summarize(results: pd.DataFrame, by: tuple[str, ...] = ("dataset",)) -> pd.DataFrame:
    """Mean and std over seeds of the accuracy averaged over the remaining scenarios/methods.

    Returns a frame indexed by ``by`` with columns (selector, "mean"|"std").
    """
    per_seed = results.groupby([*by, "selector", "seed"])["target_acc"].mean()
    stats = per_seed.groupby(level=[*range(len(by) + 1)]).agg(["mean", "std"]).fillna(0.0)
    table = stats.unstack("selector").swaplevel(0, 1, axis=1)
    order = [c for c in COLUMN_ORDER if c in table.columns.get_level_values(0)]
    order += sorted(set(table.columns.get_level_values(0)) - set(order))
    return table.reindex(columns=pd.MultiIndex.from_product([order, ["mean", "std"]]))


def to_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    """Accuracies in percent as 'mean ± std'; the best non-oracle entry of each row in bold."""
    selectors = list(dict.fromkeys(table.columns.get_level_values(0)))
    index_names = [n or "" for n in table.index.names]
    lines = ["| " + " | ".join(index_names + selectors) + " |", "|" + "---|" * (len(index_names) + len(selectors))]
    for key, row in table.iterrows():
        keys = key if isinstance(key, tuple) else (key,)
        best = max(row[(s, "mean")] for s in selectors if s != "TargetOracle")
        cells = []
        for s in selectors:
            text = f"{100 * row[(s, 'mean')]:.{digits}f} ± {100 * row[(s, 'std')]:.{digits}f}"
            cells.append(f"**{text}**" if s != "TargetOracle" and np.isclose(row[(s, "mean")], best) else text)
        lines.append("| " + " | ".join([str(k) for k in keys] + cells) + " |")
    return "\n".join(lines) + "\n"


def win_counts(results: pd.DataFrame, against: str = "IWA") -> pd.DataFrame:
    """For every selector: in how many (dataset, scenario, method, seed) runs ``against`` was better / tied / worse."""
    wide = results.pivot_table(index=["dataset", "scenario", "method", "seed"], columns="selector",
                               values="target_acc")
    rows = []
    for s in wide.columns:
        if s == against:
            continue
        diff = wide[against] - wide[s]
        rows.append({"selector": s, "better": int((diff > 1e-9).sum()), "tied": int((diff.abs() <= 1e-9).sum()),
                     "worse": int((diff < -1e-9).sum())})
    return pd.DataFrame(rows)


def plot_table(table: pd.DataFrame, path: str | Path) -> None:
    """Grouped bars: one group per dataset, one bar per selector, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selectors = list(dict.fromkeys(table.columns.get_level_values(0)))
    x = np.arange(len(table))
    width = 0.8 / len(selectors)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(table) + 3), 4))
    for i, s in enumerate(selectors):
        ax.bar(x + i * width, 100 * table[(s, "mean")], width, yerr=100 * table[(s, "std")], label=s, capsize=2)
    ax.set_xticks(x + 0.4 - width / 2, [str(k) for k in table.index])
    lo = 100 * min(table[(s, "mean")].min() for s in selectors)
    ax.set_ylim(max(0, lo - 10), 100)
    ax.set_ylabel("target accuracy (%)")
    ax.legend(ncol=min(5, len(selectors)), fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
    """results.csv, table.csv/.md (dataset x selector), table_by_method.md, iwa_wins.csv and table.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "results.csv", index=False)
    table = summarize(results)
    table.to_csv(out / "table.csv")
    (out / "table.md").write_text(to_markdown(table))
    (out / "table_by_method.md").write_text(to_markdown(summarize(results, by=("dataset", "method"))))
    win_counts(results).to_csv(out / "iwa_wins.csv", index=False)
    plot_table(table, out / "table.png")
    return table
