"""Loader for CAMELS-US basins (lumped Daymet/Maurer/NLDAS forcings and USGS discharge) from a user path.

Layout (as distributed by NCAR):
``<root>/basin_mean_forcing/<source>/<huc2>/<gauge_id>_lump_<tag>_forcing_leap.txt`` — three header lines
(latitude, elevation, area in m²), a column line ``Year Mnth Day Hr dayl(s) prcp(mm/day) srad(W/m2) swe(mm)
tmax(C) tmin(C) vp(Pa)``, then whitespace-separated rows; and
``<root>/usgs_streamflow/<huc2>/<gauge_id>_streamflow_qc.txt`` — rows ``gauge_id year month day Q(ft³/s) flag``
with negative values marking missing data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .base import Task, task_rng
from .hydrology import FORCINGS, basin_samples

CFS_TO_M3S = 0.0283168466
_FORCING_COLUMNS = {"prcp(mm/day)": "prcp", "srad(W/m2)": "srad", "tmax(C)": "tmax", "tmin(C)": "tmin", "vp(Pa)": "vp"}


def _find_one(folder: Path, pattern: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if len(hits) != 1:
        raise ValueError(f"expected exactly one file matching {folder}/{pattern}, found {len(hits)}")
    return hits[0]


def load_camels_basin(root: str | Path, gauge_id: str, source: str = "daymet") -> pd.DataFrame:
    """One basin's daily forcings and discharge as a date-indexed DataFrame with columns
    ``prcp, srad, tmax, tmin, vp`` and ``qobs`` (mm/day; NaN where missing)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"CAMELS root {root} is not a directory")
    forcing_file = _find_one(root / "basin_mean_forcing" / source, f"*/{gauge_id}_lump_*_forcing_leap.txt")
    with open(forcing_file) as fh:
        header = [fh.readline() for _ in range(3)]
    area_m2 = float(header[2])
    if area_m2 <= 0:
        raise ValueError(f"{forcing_file}: basin area (third header line) must be positive, got {area_m2}")
    forcing = pd.read_csv(forcing_file, sep=r"\s+", skiprows=3)
    missing = set(_FORCING_COLUMNS) - set(forcing.columns)
    if missing:
        raise ValueError(f"{forcing_file}: missing forcing columns {sorted(missing)}")
    forcing.index = pd.to_datetime(dict(year=forcing["Year"], month=forcing["Mnth"], day=forcing["Day"]))
    forcing = forcing[list(_FORCING_COLUMNS)].rename(columns=_FORCING_COLUMNS)

    flow_file = _find_one(root / "usgs_streamflow", f"*/{gauge_id}_streamflow_qc.txt")
    flow = pd.read_csv(flow_file, sep=r"\s+", header=None, names=["gauge", "year", "month", "day", "q", "flag"],
                       dtype={"gauge": str})
    flow.index = pd.to_datetime(flow[["year", "month", "day"]])
    q_cfs = flow["q"].where(flow["q"] >= 0)
    qobs = q_cfs * CFS_TO_M3S * 86400.0 / area_m2 * 1000.0
    return forcing.join(qobs.rename("qobs"), how="left")


@dataclass
class CamelsFamily:
    """Real basins as tasks. ``basins`` maps split name → gauge ids. Support days are drawn from
    ``train_period`` and ``query_days`` query days from ``test_period`` (only days with observed discharge);
    equal pool sizes across basins (``train_days``) let tasks be batched."""

    root: str
    basins: dict[str, list[str]]
    train_period: tuple[str, str] = ("1999-10-01", "2003-09-30")
    test_period: tuple[str, str] = ("2003-10-01", "2005-09-30")
    seq_len: int = 365
    train_days: int = 1000
    query_days: int = 365
    source: str = "daymet"
    seed: int = 0
    name: str = "camels"

    def _days(self, df: pd.DataFrame, period: tuple[str, str], n: int, rng: np.random.Generator) -> np.ndarray:
        in_period = (df.index >= period[0]) & (df.index <= period[1])
        pos = np.flatnonzero(in_period & df["qobs"].notna().to_numpy())
        pos = pos[pos >= self.seq_len - 1]
        if len(pos) < n:
            raise ValueError(f"period {period} has {len(pos)} usable days with discharge, need {n}")
        return np.sort(rng.choice(pos, n, replace=False))

    def task(self, split: str, index: int) -> Task:
        if split not in self.basins or not 0 <= index < len(self.basins[split]):
            raise ValueError(f"no basin {index} in split {split!r} (have {({k: len(v) for k, v in self.basins.items()})})")
        gauge = self.basins[split][index]
        df = load_camels_basin(self.root, gauge, self.source)
        rng = task_rng(self.seed, split, index)
        forcings, q = df[list(FORCINGS)].to_numpy(), df["qobs"].to_numpy()
        x_tr, y_tr = basin_samples(forcings, q, self.seq_len, self._days(df, self.train_period, self.train_days, rng))
        x_te, y_te = basin_samples(forcings, q, self.seq_len, self._days(df, self.test_period, self.query_days, rng))
        return Task(x_tr, y_tr, x_te, y_te, params={"gauge_id": gauge})

    def tasks(self, split: str, indices: list[int]) -> list[Task]:
        return [self.task(split, i) for i in indices]

    def nominal_task(self) -> Task:
        return self.task("train", 0)
