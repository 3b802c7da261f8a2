"""Loaders for human-activity-recognition sets in their published layouts; every subject/user is a domain."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .synthetic import DomainArrays

UCI_HAR_SIGNALS = [f"{kind}_{axis}" for kind in ("body_acc", "body_gyro", "total_acc") for axis in "xyz"]
HHAR_CLASSES = ["bike", "sit", "stand", "walk", "stairsup", "stairsdown"]
WISDM_CLASSES = ["Walking", "Jogging", "Upstairs", "Downstairs", "Sitting", "Standing"]


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise ValueError(f"{what}: expected {path} to exist")
    return path


def load_uci_har(root: str | Path) -> DomainArrays:
    """UCI-HAR ("UCI HAR Dataset" folder): the 9 inertial signals of train/ and test/ as windows (9, 128),
    labels 0-5 from y_*.txt, grouped by subject_*.txt into {"subject_<id>": (x, y)}."""
    root = Path(root)
    xs, ys, subjects = [], [], []
    for split in ("train", "test"):
        folder = _existing(root / split, "UCI-HAR root")
        signals = [np.loadtxt(_existing(folder / "Inertial Signals" / f"{s}_{split}.txt", "UCI-HAR signal"), ndmin=2)
                   for s in UCI_HAR_SIGNALS]
        xs.append(np.stack(signals, axis=1))
        ys.append(np.loadtxt(folder / f"y_{split}.txt", dtype=np.int64, ndmin=1) - 1)
        subjects.append(np.loadtxt(folder / f"subject_{split}.txt", dtype=np.int64, ndmin=1))
    x, y, subject = np.concatenate(xs).astype(np.float32), np.concatenate(ys), np.concatenate(subjects)
    if not (len(x) == len(y) == len(subject)):
        raise ValueError(f"UCI-HAR: {len(x)} windows but {len(y)} labels and {len(subject)} subject ids")
    return {f"subject_{s}": (x[subject == s], y[subject == s]) for s in np.unique(subject)}


def sliding_windows(signal: np.ndarray, labels: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows (channels, window) of a (T, channels) recording over which the label does not change."""
    starts = np.arange(0, len(signal) - window + 1, stride)
    keep = [s for s in starts if np.all(labels[s:s + window] == labels[s])]
    if not keep:
        return np.zeros((0, signal.shape[1], window), np.float32), np.zeros(0, np.int64)
    return (np.stack([signal[s:s + window].T for s in keep]).astype(np.float32),
            np.array([labels[s] for s in keep], dtype=np.int64))


def _group_windows(records: pd.DataFrame, key: str, window: int, stride: int) -> DomainArrays:
    """Window each recording (rows sharing ``key`` and 'recording', in time order) and group by ``key``."""
    out: dict[str, list] = {}
    for (domain, _), rec in records.groupby([key, "recording"], sort=True):
        x, y = sliding_windows(rec[["x", "y", "z"]].to_numpy(np.float64), rec["label"].to_numpy(), window, stride)
        if len(y):
            out.setdefault(f"user_{domain}", []).append((x, y))
    return {d: (np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])) for d, parts in out.items()}


def load_hhar(csv_path: str | Path, window: int = 128, stride: int = 64) -> DomainArrays:
    """HHAR (Heterogeneity Activity Recognition) accelerometer CSV (columns Index, Arrival_Time, Creation_Time, x, y,
    z, User, Model, Device, gt): windows (3, window) per user and device recording, 'null' activity dropped."""
    df = pd.read_csv(_existing(Path(csv_path), "HHAR csv"))
    missing = {"Creation_Time", "x", "y", "z", "User", "Device", "gt"} - set(df.columns)
    if missing:
        raise ValueError(f"HHAR csv: missing columns {sorted(missing)}")
    df = df.sort_values(["User", "Device", "Creation_Time"])
    # A recording is a run of one activity on one user's device; runs end at 'null' gaps and label changes.
    change = (df["User"] != df["User"].shift()) | (df["Device"] != df["Device"].shift()) | (df["gt"] != df["gt"].shift())
    df = df.assign(recording=change.cumsum())
    df = df[df["gt"].isin(HHAR_CLASSES)]
    return _group_windows(df.assign(label=df["gt"].map(HHAR_CLASSES.index)), "User", window, stride)


def load_wisdm(raw_path: str | Path, window: int = 128, stride: int = 64) -> DomainArrays:
    """WISDM v1.1 raw file (records 'user,activity,timestamp,x,y,z;'): windows (3, window) per user, taken inside
    runs of one activity. Malformed records (a known quirk of the file) are skipped."""
    rows = []
    for record in _existing(Path(raw_path), "WISDM raw file").read_text().replace("\n", ";").split(";"):
        fields = [f.strip() for f in record.strip().strip(",").split(",")]
        if len(fields) != 6 or fields[1] not in WISDM_CLASSES:
            continue
        try:
            rows.append((int(fields[0]), WISDM_CLASSES.index(fields[1]), int(fields[2]),
                         float(fields[3]), float(fields[4]), float(fields[5])))
        except ValueError:
            continue
    if not rows:
        raise ValueError(f"WISDM: no valid 'user,activity,timestamp,x,y,z;' records in {raw_path}")
    df = pd.DataFrame(rows, columns=["user", "label", "timestamp", "x", "y", "z"])
    # A recording is a run of consecutive records of one user and activity, in file order.
    change = (df["user"] != df["user"].shift()) | (df["label"] != df["label"].shift())
    df = df.assign(recording=change.cumsum())
    return _group_windows(df, "user", window, stride)
