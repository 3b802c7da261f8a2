"""Writing result tables: CSV for machines, Markdown for people."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def format_mean_std(mean: float, std: float, digits: int) -> str:
    """'mean ± std' for a table cell; a NaN std (one seed) reads 0 and a NaN mean (every run diverged) 'diverged'."""
    if pd.isna(mean):
        return "diverged"
    return f"{mean:.{digits}f} ± {0.0 if pd.isna(std) else std:.{digits}f}"


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table of df (index included when it is named); floats rounded to `digits`."""
    table = df.reset_index() if any(name is not None for name in df.index.names) else df

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(str(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, stem: Path | str, digits: int = 3, title: str | None = None) -> None:
    """Write `stem`.csv and `stem`.md (with an optional heading)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(stem.with_suffix(".csv"), index=any(name is not None for name in df.index.names))
    heading = f"## {title}\n\n" if title else ""
    stem.with_suffix(".md").write_text(heading + markdown_table(df, digits))
