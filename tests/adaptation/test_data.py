"""Generators and real-format loaders, the latter on tiny files written in the published layouts."""

import numpy as np
import pytest

from adaptation.data import (
    DatasetConfig,
    build_scenarios,
    load_amazon_reviews,
    load_hhar,
    load_mini_domainnet,
    load_sleep_edf,
    load_uci_har,
    load_wisdm,
    read_annotations,
    sensor_subjects,
    shifted_digits,
    split_domain,
    transformed_moons,
)


def test_transformed_moons_rotates_target():
    d = transformed_moons(n=400, angle=90.0, scale=1.0, noise=0.0, seed=0)
    xs, xt = d["source"][0], d["target"][0]
    assert xs.shape == xt.shape == (400, 2)
    # A 90-degree rotation about the centre swaps the spreads of the two coordinates.
    np.testing.assert_allclose(xt.std(0), xs.std(0)[::-1], rtol=0.1)


@pytest.mark.parametrize("shift", ["rotate", "scale", "stroke", "noise"])
def test_shifted_digits(shift):
    d = shifted_digits(shift, seed=0)
    (xs, _), (xt, yt) = d["source"], d["target"]
    assert xs.shape[1] == xt.shape[1] == 64 and len(xs) + len(xt) == 1797
    assert 0.0 <= xt.min() and xt.max() <= 1.0 and set(yt) == set(range(10))
    assert abs(xs.mean() - xt.mean()) > 0.005 or abs(xs.std() - xt.std()) > 0.005


def test_sensor_subjects_shapes_and_subject_shift():
    d = sensor_subjects("uci_har", n_subjects=2, per_class=5, seed=0)
    x0, y0 = d["subject_0"]
    assert x0.shape == (30, 9, 128) and np.bincount(y0).tolist() == [5] * 6
    x1, _ = d["subject_1"]
    assert np.abs(x0.mean(axis=(0, 2)) - x1.mean(axis=(0, 2))).max() > 0.1


def test_split_domain_sizes_and_errors():
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10) % 2
    dom = split_domain(x, y, (5, 3, 2), seed=0)
    assert sorted(np.concatenate([dom.x_train, dom.x_val, dom.x_test])[:, 0].tolist()) == list(range(0, 20, 2))
    with pytest.raises(ValueError, match="sizes"):
        split_domain(x, y, (8, 3, 2), seed=0)


def test_uci_har_layout(tmp_path):
    root = tmp_path / "UCI HAR Dataset"
    rng = np.random.default_rng(0)
    for split, subjects, labels in (("train", [1, 1, 3], [1, 2, 6]), ("test", [2, 2], [4, 5])):
        sig = root / split / "Inertial Signals"
        sig.mkdir(parents=True)
        for kind in ("body_acc", "body_gyro", "total_acc"):
            for axis in "xyz":
                np.savetxt(sig / f"{kind}_{axis}_{split}.txt", rng.normal(size=(len(labels), 128)))
        np.savetxt(root / split / f"y_{split}.txt", labels, fmt="%d")
        np.savetxt(root / split / f"subject_{split}.txt", subjects, fmt="%d")
    d = load_uci_har(root)
    assert sorted(d) == ["subject_1", "subject_2", "subject_3"]
    assert d["subject_1"][0].shape == (2, 9, 128) and d["subject_1"][1].tolist() == [0, 1]
    assert d["subject_2"][1].tolist() == [3, 4]
    body_acc_y = np.loadtxt(root / "test" / "Inertial Signals" / "body_acc_y_test.txt")
    np.testing.assert_allclose(d["subject_2"][0][:, 1], body_acc_y, rtol=1e-6)


def test_hhar_csv(tmp_path):
    rows = ["Index,Arrival_Time,Creation_Time,x,y,z,User,Model,Device,gt"]
    t = 0
    for user in ("a", "b"):
        for gt, n in (("walk", 100), ("null", 20), ("sit", 70)):
            for _ in range(n):
                rows.append(f"{t},{t},{t},0.1,0.2,{9.8 if gt == 'sit' else 1.0},{user},nexus4,nexus4_1,{gt}")
                t += 1
    path = tmp_path / "Phones_accelerometer.csv"
    path.write_text("\n".join(rows))
    d = load_hhar(path, window=32, stride=16)
    x, y = d["user_a"]
    # walk: 100 samples -> 5 windows; sit: 70 samples -> 3 windows; no window straddles a label change.
    assert x.shape == (8, 3, 32) and sorted(y.tolist()) == [1] * 3 + [3] * 5
    assert np.all(x[y == 1][:, 2] == pytest.approx(9.8))


def test_wisdm_raw(tmp_path):
    lines = [f"7,Jogging,{i},0.5,1.5,{i % 3}.0;" for i in range(40)]
    lines += ["7,Jogging,99,,,;", "garbage line", "8,Sitting,5,0.1,0.2,0.3,"]
    lines += [f"8,Sitting,{i},0.1,0.2,0.3;" for i in range(20)]
    path = tmp_path / "WISDM_ar_v1.1_raw.txt"
    path.write_text("\n".join(lines))
    d = load_wisdm(path, window=16, stride=8)
    assert d["user_7"][0].shape == (4, 3, 16) and set(d["user_7"][1]) == {1}
    assert d["user_8"][0].shape[0] == 1 and d["user_8"][1].tolist() == [4]  # 21 records incl. the one ending ','


def _edf_bytes(signals, record_seconds, n_records):
    """signals: list of (label, samples_per_record, int16 array or raw bytes) -> EDF(+) file bytes."""
    ns = len(signals)
    head = (f"{'0':<8}{'x':<80}{'x':<80}{'01.01.89':<8}{'00.00.00':<8}{256 + 256 * ns:<8}{'EDF+C':<44}"
            f"{n_records:<8}{record_seconds:<8}{ns:<4}").encode()
    cols = [("label", 16), ("t", 80), ("d", 8), ("pmin", 8), ("pmax", 8), ("dmin", 8), ("dmax", 8), ("pf", 80),
            ("n", 8), ("r", 32)]
    values = {"pmin": "-100", "pmax": "100", "dmin": "-32768", "dmax": "32767"}
    for name, width in cols:
        for label, n, _ in signals:
            v = {"label": label, "n": str(n)}.get(name, values.get(name, ""))
            head += f"{v:<{width}}".encode()
    body = b""
    for r in range(n_records):
        for _, n, data in signals:
            body += data[r * 2 * n:(r + 1) * 2 * n] if isinstance(data, bytes) else data[r * n:(r + 1) * n].astype("<i2").tobytes()
    return head + body


def test_sleep_edf_layout(tmp_path):
    fs, epochs = 2, 4                                   # 2 Hz, four 30-s epochs in 30-s records
    digital = np.arange(fs * 30 * epochs, dtype=np.int16) * 100
    (tmp_path / "SC4011E0-PSG.edf").write_bytes(_edf_bytes([("EEG Fpz-Cz", fs * 30, digital)], 30, epochs))
    tal = "+0\x14\x14\x00+0\x1530\x14Sleep stage W\x14\x00+30\x1560\x14Sleep stage 4\x14\x00" \
          "+90\x1530\x14Sleep stage ?\x14\x00"
    raw = tal.encode("latin-1").ljust(2 * 64, b"\x00")
    (tmp_path / "SC4011EH-Hypnogram.edf").write_bytes(_edf_bytes([("EDF Annotations", 64, raw)], 0, 1))
    assert read_annotations(tmp_path / "SC4011EH-Hypnogram.edf")[1] == (30.0, 60.0, "Sleep stage 4")
    d = load_sleep_edf(tmp_path)
    x, y = d["subject_01"]
    assert x.shape == (3, 1, 60) and y.tolist() == [0, 3, 3]
    scale = 200 / 65535
    np.testing.assert_allclose(x[1, 0, :3], (digital[60:63].astype(float) + 32768) * scale - 100, rtol=1e-5)


def test_amazon_processed_acl(tmp_path):
    for domain, words in (("books", "plot"), ("kitchen", "knife")):
        (tmp_path / domain).mkdir()
        (tmp_path / domain / "positive.review").write_text(f"great:2 {words}:1 great_{words}:1 #label#:positive\n" * 3)
        (tmp_path / domain / "negative.review").write_text(f"bad:3 {words}:1 #label#:negative\n" * 2)
    d = load_amazon_reviews(tmp_path, domains=("books", "kitchen"), max_features=4)
    x, y = d["books"]
    assert x.shape == (5, 4) and y.tolist() == [1, 1, 1, 0, 0]
    assert np.isclose(x[3].max(), np.log1p(3))


def test_mini_domainnet_layout(tmp_path):
    from PIL import Image

    (tmp_path / "splits_mini").mkdir()
    for domain in ("clipart", "sketch"):
        lines = []
        for label, cls in enumerate(("cat", "dog")):
            (tmp_path / domain / cls).mkdir(parents=True)
            rel = f"{domain}/{cls}/img_{label}.png"
            Image.new("RGB", (20, 12), (255 * label, 0, 128)).save(tmp_path / rel)
            lines.append(f"{rel} {label}")
        (tmp_path / "splits_mini" / f"{domain}_train.txt").write_text("\n".join(lines))
        (tmp_path / "splits_mini" / f"{domain}_test.txt").write_text(lines[0])
    d = load_mini_domainnet(tmp_path, domains=("clipart", "sketch"), image_size=8)
    x, y = d["sketch"]
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [0, 1, 0]
    np.testing.assert_allclose(x[1, :, 0, 0], [1.0, 0.0, 128 / 255], atol=1e-6)


def test_build_scenarios_and_errors():
    (sc,) = build_scenarios(DatasetConfig(name="sensors", scenarios=["subject_0->subject_1"],
                                          options={"profile": "hhar", "n_subjects": 2, "per_class": 10},
                                          sizes=(0.5, 0.25, 0.25), standardize=True))
    assert sc.input_shape == (3, 128) and sc.num_classes == 6
    np.testing.assert_allclose(sc.source.x_train.mean(axis=(0, 2)), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="set its path"):
        build_scenarios(DatasetConfig(name="uci_har"))
    with pytest.raises(ValueError, match="source->target"):
        build_scenarios(DatasetConfig(name="moons", scenarios=["a->b"]))
    with pytest.raises(ValueError, match="dataset"):
        build_scenarios(DatasetConfig(name="mnist"))
