"""Probe: does Triton's automatic warp specialisation speed up the chunkwise mLSTM forward on Hopper?

`tl.range(..., warp_specialize=True)` asks Triton (>= 3.5 on sm_90) to split a loop into producer warps (the TMA
copies) and consumer warps (the products): the producer / consumer overlap benchmarks/notes/mlstm_kernels.md names as
the next step for the L2-bound forward kernels. Each variant is a production kernel's source with its main loop(s)
rewritten that way, swapped into the kernel's TileChoice with one config at a time; the whole forward (65,536 tokens,
NH 8, DHQK 256, DHV 512, bf16, chunk 256, no grad) is timed from CUDA-graph replays, each kernel's time taken from
torch.profiler, and the output compared with the production kernels' output of the same run. A variant that does not
compile is reported, not fatal. Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.mlstm_warp_specialize [--out benchmarks/results/mlstm_warp_specialize_s17.json]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import tempfile
from pathlib import Path

import torch
import triton

from benchmarks.common import graph_ms, kernel_ms, row, write_results
from kernels import mlstm

TOKENS, NH, DK, DV, CHUNK = 65536, 8, 256, 512, 256


def _rewritten(jit_fn, replacements: list[tuple[str, str]], module, folder: Path):
    """A JIT kernel compiled from jit_fn's source with `replacements` applied, resolving names in `module`."""
    src = inspect.getsource(jit_fn.fn)
    for old, new in replacements:
        if old not in src:
            raise ValueError(f"{jit_fn.fn.__name__} no longer contains {old!r}")
        src = src.replace(old, new)
    path = folder / f"ws_{jit_fn.fn.__name__}_{len(list(folder.iterdir()))}.py"
    path.write_text("import triton\nimport triton.language as tl\n\n" + src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    for name, value in vars(module).items():
        generated.__dict__.setdefault(name, value)
    return getattr(generated, jit_fn.fn.__name__)


def _plans(cw, cs) -> list[tuple[str, object, list[tuple[str, str]], list[triton.Config], str]]:
    """(name, TileChoice, loop rewrites, configs, pinned case) per variant."""
    ws = ", warp_specialize=True):"
    below = ("for j0 in range(0, r0, BJ):", "for j0 in tl.range(0, r0, BJ" + ws)
    state = ("for k0 in range(0, DA, BK):", "for k0 in tl.range(0, DA, BK" + ws)
    intra = lambda w, s, **t: triton.Config(t, num_warps=w, num_stages=s, pre_hook=cw._descriptor_blocks)
    local = lambda ba, bx, w, s: triton.Config({"BA": ba, "BX": bx}, num_warps=w, num_stages=s,
                                               pre_hook=cs._descriptor_blocks)
    scores = lambda w, s, **t: triton.Config(t, num_warps=w, num_stages=s)
    intra_configs = [intra(4, 3, BR=128, BJ=64, BX=128), intra(4, 2, BR=128, BJ=64, BX=128),
                     intra(8, 3, BR=128, BJ=64, BX=128), intra(4, 3, BR=64, BJ=64, BX=128),
                     intra(8, 2, BR=128, BJ=64, BX=256), intra(4, 4, BR=128, BJ=64, BX=128)]
    return [
        ("intra: below-diagonal loop", cw.INTRA_FWD_TILES, [below], intra_configs, "h"),
        ("intra: state and below-diagonal loops", cw.INTRA_FWD_TILES, [below, state], intra_configs[:3], "h"),
        ("local: column-block loop", cs.LOCAL_TILES,
         [("for x0 in range(0, DX, BX):", "for x0 in tl.range(0, DX, BX" + ws)],
         [local(64, 32, 4, 4), local(64, 64, 4, 3), local(64, 64, 8, 2), local(64, 128, 4, 2)], "fwd"),
        ("scores: column loop", cw.SCORES_TILES,
         [("for j0 in range(0, j_hi, BJ):", "for j0 in tl.range(0, j_hi, BJ" + ws)],
         [scores(4, 2, BR=32, BJ=64), scores(4, 3, BR=64, BJ=64), scores(8, 2, BR=64, BJ=64)], "h"),
    ]


def _inputs():
    g = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device="cuda", generator=g)
    return (rand(1, NH, TOKENS, DK).bfloat16(), rand(1, NH, TOKENS, DK).bfloat16(),
            rand(1, NH, TOKENS, DV).bfloat16(), rand(1, NH, TOKENS).bfloat16(), (rand(1, NH, TOKENS) + 3).bfloat16())


def _measure(inputs, variant: str, config: str, reference=None) -> tuple[list[dict], torch.Tensor]:
    q, k, v, i, f = inputs
    forward = lambda: mlstm(q, k, v, igate=i, fgate=f, variant=variant, chunk_size=CHUNK, backend="triton")
    with torch.no_grad():
        out = forward()
        ms = graph_ms(forward, calls=5)
        kernels = kernel_ms(forward, min_ms=0.05)
    fields = dict(variant=variant, config=config, kernel_ms=kernels)
    if reference is not None:
        error = (out.float() - reference.float()).norm() / reference.float().norm()
        fields["rel_err_vs_production"] = error.item()
    return [row("ours:triton", f"fwd-64k-{DK}-{DV}", "fwd_time", round(ms, 4), "ms", **fields)], out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/mlstm_warp_specialize_s17.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    cw = importlib.import_module("kernels.mlstm.chunkwise_triton")
    cs = importlib.import_module("kernels.mlstm.chunk_states_triton")
    inputs, rows, references = _inputs(), [], {}
    for variant in ("sig", "exp"):
        new, references[variant] = _measure(inputs, variant, "production")
        rows += new
    with tempfile.TemporaryDirectory() as folder:
        for name, tiles, rewrites, configs, case in _plans(cw, cs):
            saved = (tiles.kernel, tiles.configs, dict(tiles.pinned))
            module = inspect.getmodule(saved[0].fn)
            tiles.kernel = _rewritten(saved[0], rewrites, module, Path(folder))
            for config in configs:
                tiles.configs, tiles.pinned = [config], {**saved[2], case: 0}
                label = f"{name} [{config}]"
                for variant in ("sig", "exp"):
                    try:
                        new, _ = _measure(inputs, variant, label, references[variant])
                    except Exception as failure:  # noqa: BLE001 (a variant that does not compile is a result)
                        rows.append(row("ours:triton+ws", f"fwd-64k-{DK}-{DV}", "error", type(failure).__name__, "",
                                        variant=variant, config=label))
                        break
                    for r in new:
                        r["impl"] = "ours:triton+ws"
                    rows += new
            tiles.kernel, tiles.configs, tiles.pinned = saved
    for r in rows:
        value = f"{r['value']:.4f} ms" if r["metric"] == "fwd_time" else f"failed ({r['value']})"
        err = f"  err {r['rel_err_vs_production']:.1e}" if "rel_err_vs_production" in r else ""
        print(f"{r['variant']:4s} {r['config'][:90]:90s} {value}{err}")
    print(f"wrote {write_results(args.out, rows, note=__doc__.splitlines()[0])}")


if __name__ == "__main__":
    main()
