"""Sleep-EDF (Expanded, sleep-cassette) loader with a small EDF/EDF+ reader; every subject is a domain."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .synthetic import DomainArrays

# R&K stages -> 5 AASM classes (W, N1, N2, N3, REM); stages 3 and 4 merge into N3. '?' and movement are dropped.
SLEEP_STAGES = {"Sleep stage W": 0, "Sleep stage 1": 1, "Sleep stage 2": 2, "Sleep stage 3": 3,
                "Sleep stage 4": 3, "Sleep stage R": 4}


@dataclass
class EDFSignal:
    label: str
    sampling_rate: float
    data: np.ndarray  # physical units, or the raw bytes' annotation text for "EDF Annotations"


def _field(raw: bytes, start: int, width: int, count: int) -> list[str]:
    return [raw[start + i * width:start + (i + 1) * width].decode("ascii", "replace").strip() for i in range(count)]


def read_edf(path: str | Path) -> dict[str, EDFSignal]:
    """Read an EDF/EDF+ file: {label: EDFSignal}; ordinary signals are scaled to physical units, an
    "EDF Annotations" signal keeps its raw bytes (see ``read_annotations``)."""
    raw = Path(path).read_bytes()
    if len(raw) < 256:
        raise ValueError(f"EDF {path}: file too short for a 256-byte header")
    n_records, duration, ns = int(_field(raw, 236, 8, 1)[0]), float(_field(raw, 244, 8, 1)[0]), int(raw[252:256])
    header_bytes = 256 + 256 * ns
    pos, cols = 256, {}
    for name, width in [("label", 16), ("transducer", 80), ("dim", 8), ("pmin", 8), ("pmax", 8), ("dmin", 8),
                        ("dmax", 8), ("prefilter", 80), ("samples", 8), ("reserved", 32)]:
        cols[name] = _field(raw, pos, width, ns)
        pos += width * ns
    samples = [int(s) for s in cols["samples"]]
    record_len = sum(samples)
    if n_records < 0:  # -1 = unknown in the header; infer from the file size
        n_records = (len(raw) - header_bytes) // (2 * record_len)
    body = np.frombuffer(raw, dtype="<i2", count=n_records * record_len, offset=header_bytes)
    body = body.reshape(n_records, record_len)
    out, offset = {}, 0
    for i, label in enumerate(cols["label"]):
        chunk = body[:, offset:offset + samples[i]]
        offset += samples[i]
        if label == "EDF Annotations":
            out[label] = EDFSignal(label, 0.0, chunk.tobytes())
            continue
        pmin, pmax, dmin, dmax = (float(cols[k][i]) for k in ("pmin", "pmax", "dmin", "dmax"))
        scale = (pmax - pmin) / (dmax - dmin)
        out[label] = EDFSignal(label, samples[i] / duration, (chunk.reshape(-1) - dmin) * scale + pmin)
    return out


def read_annotations(path: str | Path) -> list[tuple[float, float, str]]:
    """(onset s, duration s, text) of every annotation in an EDF+ file's time-stamped annotation lists."""
    signals = read_edf(path)
    if "EDF Annotations" not in signals:
        raise ValueError(f"EDF {path}: no 'EDF Annotations' signal (expected an EDF+ hypnogram)")
    text = signals["EDF Annotations"].data.decode("latin-1")
    events = []
    for tal in text.split("\x00"):
        m = re.match(r"([+-]\d+(?:\.\d*)?)(?:\x15(\d+(?:\.\d*)?))?\x14(.*)", tal, flags=re.DOTALL)
        if not m:
            continue
        for note in m.group(3).split("\x14"):
            if note:
                events.append((float(m.group(1)), float(m.group(2) or 0.0), note))
    return events


def load_sleep_edf(root: str | Path, channel: str = "EEG Fpz-Cz", epoch_seconds: float = 30.0) -> DomainArrays:
    """Sleep-cassette recordings ``SC4ssN*-PSG.edf`` with hypnograms ``SC4ssN*-Hypnogram.edf`` under ``root``:
    30-s epochs of ``channel`` as (1, samples) windows with 5-class stage labels, grouped {"subject_ss": (x, y)}."""
    root = Path(root)
    psgs = sorted(root.glob("*-PSG.edf"))
    if not psgs:
        raise ValueError(f"Sleep-EDF: no '*-PSG.edf' files under {root}")
    parts: dict[str, list] = {}
    for psg in psgs:
        hyp = sorted(root.glob(psg.name[:6] + "*-Hypnogram.edf"))
        if not hyp:
            raise ValueError(f"Sleep-EDF: no hypnogram '{psg.name[:6]}*-Hypnogram.edf' for {psg.name}")
        signals = read_edf(psg)
        if channel not in signals:
            raise ValueError(f"Sleep-EDF {psg.name}: channel {channel!r} not in {sorted(signals)}")
        sig = signals[channel]
        per_epoch = round(sig.sampling_rate * epoch_seconds)
        xs, ys = [], []
        for onset, duration, note in read_annotations(hyp[0]):
            if note not in SLEEP_STAGES:
                continue
            for k in range(int(duration // epoch_seconds)):
                start = round((onset + k * epoch_seconds) * sig.sampling_rate)
                if start + per_epoch <= len(sig.data):
                    xs.append(sig.data[start:start + per_epoch])
                    ys.append(SLEEP_STAGES[note])
        if xs:
            parts.setdefault(f"subject_{psg.name[3:5]}", []).append(
                (np.stack(xs)[:, None, :].astype(np.float32), np.array(ys, dtype=np.int64)))
    return {s: (np.concatenate([a for a, _ in p]), np.concatenate([b for _, b in p])) for s, p in parts.items()}
