import numpy as np
import pandas as pd
import pytest

from fewshot.tasks import CamelsFamily, load_camels_basin

AREA_M2 = 2.5e8


def _write_basin(root, gauge, days=500, huc="01"):
    dates = pd.date_range("2000-01-01", periods=days, freq="D")
    rng = np.random.default_rng(int(gauge))
    fdir = root / "basin_mean_forcing" / "daymet" / huc
    qdir = root / "usgs_streamflow" / huc
    fdir.mkdir(parents=True, exist_ok=True)
    qdir.mkdir(parents=True, exist_ok=True)
    lines = ["44.5", "250", f"{AREA_M2:.1f}",
             "Year Mnth Day Hr dayl(s) prcp(mm/day) srad(W/m2) swe(mm) tmax(C) tmin(C) vp(Pa)"]
    for d in dates:
        lines.append(f"{d.year} {d.month:02d} {d.day:02d} 12 36000.0 {rng.gamma(0.5, 4):.2f} {rng.uniform(50, 300):.2f} "
                     f"0 {rng.uniform(5, 25):.2f} {rng.uniform(-5, 5):.2f} {rng.uniform(400, 1500):.2f}")
    (fdir / f"{gauge}_lump_cida_forcing_leap.txt").write_text("\n".join(lines) + "\n")
    q = rng.uniform(10, 100, days)
    q[3] = -999.0  # missing
    qlines = [f"{gauge} {d.year} {d.month:02d} {d.day:02d} {v:.2f} A" for d, v in zip(dates, q)]
    (qdir / f"{gauge}_streamflow_qc.txt").write_text("\n".join(qlines) + "\n")
    return q


def test_loader_parses_forcings_and_converts_discharge(tmp_path):
    q = _write_basin(tmp_path, "01013500")
    df = load_camels_basin(tmp_path, "01013500")
    assert list(df.columns) == ["prcp", "srad", "tmax", "tmin", "vp", "qobs"]
    assert len(df) == 500 and df.index[0] == pd.Timestamp("2000-01-01")
    assert np.isnan(df["qobs"].iloc[3])
    expected = q[10] * 0.0283168466 * 86400 / AREA_M2 * 1000  # cfs -> mm/day
    assert df["qobs"].iloc[10] == pytest.approx(expected, rel=1e-3)


def test_camels_family_builds_windowed_tasks(tmp_path):
    for g in ("01013500", "01022500"):
        _write_basin(tmp_path, g)
    fam = CamelsFamily(str(tmp_path), {"train": ["01013500"], "test": ["01022500"]}, seq_len=30,
                       train_period=("2000-01-01", "2000-09-30"), test_period=("2000-10-01", "2001-05-14"),
                       train_days=100, query_days=60)
    task = fam.task("test", 0)
    assert task.x_train.shape == (100, 30, 5) and task.y_train.shape == (100, 1) and task.x_test.shape == (60, 30, 5)
    assert task.params["gauge_id"] == "01022500"
    with pytest.raises(ValueError, match="usable days"):
        CamelsFamily(str(tmp_path), {"train": ["01013500"]}, seq_len=30, train_days=5000,
                     train_period=("2000-01-01", "2000-09-30")).task("train", 0)


def test_loader_reports_missing_files(tmp_path):
    with pytest.raises(ValueError, match="exactly one file"):
        _write_basin(tmp_path, "01013500")
        load_camels_basin(tmp_path, "09999999")
