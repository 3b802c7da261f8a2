"""benchmarks.vil_ab: arms parsed and checked, their order flipped every round, failed processes recorded and left out
of the medians, and the worker run in a tree of its own (here fake trees whose steps only count, on the CPU)."""
import json
import textwrap

import pytest

from benchmarks import vil_ab


def fake_tree(root, name, body="pass"):
    """A tree whose `vision.throughput.synthetic_steps` returns steps that run `body` and do nothing else."""
    tree = root / name
    (tree / "vision").mkdir(parents=True)
    (tree / "vision" / "__init__.py").write_text("")
    (tree / "vision" / "throughput.py").write_text(textwrap.dedent(f"""
        def synthetic_steps(model, model_kwargs, img_size, batch_size, device, **kwargs):
            assert model.startswith("vil_") and model_kwargs == {{"backend": "triton"}}
            def step():
                {body}
            return step, step
        """))
    return tree


def test_parse_arms_keeps_order_and_refuses_bad_specs(tmp_path):
    a, b = fake_tree(tmp_path, "a"), fake_tree(tmp_path, "b")
    assert list(vil_ab.parse_arms([f"base={a}", f"head={b}"])) == ["base", "head"]
    for specs, match in [([f"base{a}", f"head={b}"], "name=path"), ([f"x={a}", f"x={b}"], "named twice"),
                         ([f"base={a}"], "at least two"), ([f"base={a}", f"head={tmp_path}"], "not a tree")]:
        with pytest.raises(ValueError, match=match):
            vil_ab.parse_arms(specs)


def test_rounds_alternate_the_arms_and_record_failures(tmp_path):
    arms = {"base": tmp_path / "a", "head": tmp_path / "b", "other": tmp_path / "c"}
    calls = []

    def launch(tree, size):
        calls.append((tree.name, size))
        return None if tree.name == "c" else {"train": [100.0 if tree.name == "a" else 102.0]}

    records = vil_ab.run_rounds(arms, ["tiny", "small"], 2, launch)
    assert calls == [("a", "tiny"), ("b", "tiny"), ("c", "tiny"), ("a", "small"), ("b", "small"), ("c", "small"),
                     ("c", "tiny"), ("b", "tiny"), ("a", "tiny"), ("c", "small"), ("b", "small"), ("a", "small")]
    assert [r["ok"] for r in records[:3]] == [True, True, False]
    rows = vil_ab.summarise(records, list(arms), ["tiny"], ["train"])
    assert [(r["impl"], r["value"], r["change_pct"]) for r in rows] == [
        ("ours:triton base", 100.0, 0.0), ("ours:triton head", 102.0, 2.0)]


def test_summary_takes_the_median_over_all_runs_and_rounds():
    records = [{"round": 0, "size": "tiny", "arm": "base", "ok": True, "train": [90.0, 100.0, 130.0]},
               {"round": 1, "size": "tiny", "arm": "base", "ok": True, "train": [101.0]},
               {"round": 0, "size": "tiny", "arm": "head", "ok": True, "train": [95.0, 96.0]},
               {"round": 1, "size": "tiny", "arm": "head", "ok": False}]
    rows = vil_ab.summarise(records, ["base", "head"], ["tiny"], ["train"])
    assert [(r["value"], r["change_pct"]) for r in rows] == [(100.5, 0.0), (95.5, -4.98)]
    no_base = vil_ab.summarise(records[2:], ["base", "head"], ["tiny"], ["train"])
    assert [(r["impl"], r["change_pct"]) for r in no_base] == [("ours:triton head", None)]


def test_worker_runs_in_its_tree_and_reports_each_mode(tmp_path):
    tree = fake_tree(tmp_path, "a", body="open('steps.txt', 'a').write('.')")
    result = vil_ab.launch_worker(tree, "tiny", ["train", "infer"], batch=4, runs=2, steps=3, timeout=120)
    assert set(result) == {"train", "infer"} and all(len(v) == 2 and min(v) > 0 for v in result.values())
    assert (tree / "steps.txt").read_text() == "." * 2 * (5 + 2 * 3)  # warm-up and timed steps, in the arm's tree


def test_worker_failure_and_timeout_give_none(tmp_path, capsys):
    broken = fake_tree(tmp_path, "a", body="raise RuntimeError('no GPU kernel today')")
    assert vil_ab.launch_worker(broken, "tiny", ["train"], 4, 1, 1, timeout=120) is None
    assert "no GPU kernel today" in capsys.readouterr().out
    slow = fake_tree(tmp_path, "b", body="import time; time.sleep(30)")
    assert vil_ab.launch_worker(slow, "tiny", ["train"], 4, 1, 1, timeout=3) is None
    assert "no result within 3 s" in capsys.readouterr().out


def test_main_writes_results(tmp_path, monkeypatch):
    a, b = fake_tree(tmp_path, "a"), fake_tree(tmp_path, "b")
    out = tmp_path / "ab.json"
    monkeypatch.setattr("sys.argv", ["vil_ab", "--arms", f"base={a}", f"head={b}", "--rounds", "1", "--runs", "1",
                                     "--steps", "1", "--batch", "2", "--out", str(out)])
    vil_ab.main()
    saved = json.loads(out.read_text())
    assert {"device", "torch", "triton", "date", "rows", "arms", "runs"} <= set(saved)
    assert [r["impl"] for r in saved["rows"]] == ["ours:triton base", "ours:triton head"]
    assert [(r["arm"], r["ok"]) for r in saved["runs"]] == [("base", True), ("head", True)]
