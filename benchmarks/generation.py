"""Generation speed: our xLSTM-7B-style LM (chunkwise prefill, CUDA-graph decode) vs a Llama-7B-shaped Transformer
(transformers' LlamaForCausalLM with SDPA and its own KV cache), random weights, bf16, measured in one run.

    python -m benchmarks.generation                     # full: H100, 7B shapes
    python -m benchmarks.generation --quick             # tiny shapes, any device (smoke test)
"""
from __future__ import annotations

import argparse
import gc
import time
from functools import partial

import torch

from benchmarks.common import print_table, row, write_results
from xlstm_core import stream, xLSTMLM, xLSTMLMConfig
from xlstm_core.cuda_graph import GraphedDecoder

OURS = "ours:{backend}"


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def _reset_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def build_on(device, dtype, make):
    """Construct a model directly on `device` in `dtype` (no fp32 copy on the host for 7B weights)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return make().eval()
    finally:
        torch.set_default_dtype(previous)


def build_xlstm(preset: str, backend: str, device, dtype):
    return build_on(device, dtype, lambda: xLSTMLM(xLSTMLMConfig.preset(preset, stack={"backend": backend})))


def build_llama(args, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000)
    if args.quick:
        shape = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, vocab_size=256)
    config = LlamaConfig(**shape, max_position_embeddings=131072, attn_implementation="sdpa", torch_dtype=dtype)
    return build_on(device, dtype, lambda: LlamaForCausalLM(config))


def _run_case(impl, batch, context, rows, measure) -> None:
    """Time one (batch, context) case: ``measure()`` returns (prefill seconds, decoded tokens per sequence, decode
    seconds). Out-of-memory and other failures (e.g. a torch.compile variant) are recorded, not fatal to the run."""
    case = f"B{batch}-ctx{context}"
    _reset_memory()
    where = dict(batch=batch, context=context)
    try:
        prefill_s, count, decode_s = measure()
        rows += [row(impl, case, "prefill", prefill_s * 1e3, "ms", **where),
                 row(impl, case, "decode", batch * count / decode_s, "tok/s", **where),
                 row(impl, case, "peak_memory", _peak_gib(), "GiB", **where)]
    except torch.OutOfMemoryError:
        rows.append(row(impl, case, "decode", "OOM", "tok/s", **where))
    except Exception as error:
        rows.append(row(impl, case, "decode", f"failed: {type(error).__name__}", "tok/s", error=str(error)[:500],
                        **where))
    print(f"{impl} {case} done", flush=True)


@torch.no_grad()
def bench_xlstm(model, impl, cases, new_tokens, device, use_graph, rows, compile_step=False):
    decoders = {}

    def measure(batch, context):
        prompt = torch.randint(0, model.cfg.vocab_size, (batch, context), device=device)
        model.prefill(prompt[:, :16])  # warm the kernels outside the timed region
        model.prefill(prompt)
        _, prefill_s = _timed(lambda: model.prefill(prompt))
        if use_graph:
            decoder = decoders.setdefault(batch, GraphedDecoder(model, temperature=0, compile=compile_step))
            decoder.generate(prompt[:, :16], 4)  # capture once per batch size
            tokens = decoder.stream(prompt, new_tokens)
        else:
            tokens = stream(model, prompt, new_tokens, temperature=0)
        next(tokens)  # prefill and the first token are not decode time
        count, decode_s = _timed(lambda: sum(1 for _ in tokens))
        return prefill_s, count, decode_s

    for batch, context in cases:
        _run_case(impl, batch, context, rows, partial(measure, batch, context))


@torch.no_grad()
def bench_llama(model, cases, new_tokens, device, rows):
    """HF Llama with SDPA and its dynamic KV cache, greedy decode by hand (no `generate` overhead)."""

    def measure(batch, context):
        prompt = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
        model(prompt[:, :16], use_cache=True)
        out, prefill_s = _timed(lambda: model(prompt, use_cache=True, logits_to_keep=1))

        def decode():
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(new_tokens - 1):
                step = model(token, past_key_values=cache, use_cache=True)
                cache, token = step.past_key_values, step.logits[:, -1:].argmax(-1)

        _, decode_s = _timed(decode)
        return prefill_s, new_tokens - 1, decode_s

    for batch, context in cases:
        _run_case("llama-hf-sdpa", batch, context, rows, partial(measure, batch, context))


class _TokenClock:
    """A `generate` streamer that stamps the wall time of every token it receives (the prompt is the first put)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, tokens):
        tokens.tolist()  # waits for the GPU, so the stamp is the time the token exists
        self.times.append(time.perf_counter())

    def end(self):
        pass


@torch.no_grad()
def bench_llama_static(model, cases, new_tokens, device, rows, mode="reduce-overhead"):
    """HF's fastest documented path: a static KV cache and a torch.compile'd forward (reduce-overhead = CUDA graphs)."""
    model.forward = torch.compile(model.forward, mode=mode, fullgraph=True)

    def measure(batch, context):
        prompt = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
        options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       cache_implementation="static")
        for _ in range(2):  # compile and record the graphs for this shape
            model.generate(prompt, **options)
        clock = _TokenClock()
        start = time.perf_counter()
        model.generate(prompt, streamer=clock, **options)
        return clock.times[1] - start, len(clock.times) - 2, clock.times[-1] - clock.times[1]

    for batch, context in cases:
        _run_case(f"llama-hf-static+compile({mode})", batch, context, rows, partial(measure, batch, context))


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for impl in sorted({r["impl"] for r in rows}):
        for ax, metric in zip(axes, ("decode", "peak_memory")):
            pts = sorted((r["context"], r["value"]) for r in rows if r["impl"] == impl and r["metric"] == metric
                         and r.get("batch") == 1 and isinstance(r["value"], (int, float)))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
    contexts = sorted({r["context"] for r in rows if r.get("batch") == 1})
    axes[0].set(ylabel="decode tokens/s (batch 1)")
    axes[1].set(ylabel="peak memory (GiB, batch 1)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [f"{c // 1024}k" if c >= 1024 else str(c) for c in contexts], minor=False)
        ax.minorticks_off()
        ax.set_xlabel("context (tokens)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test on any device")
    parser.add_argument("--backend", default="auto", help="mLSTM backend of our model: auto | torch | triton")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also decode with a torch.compile'd step in the graph")
    parser.add_argument("--llama-static", type=int, default=0, metavar="N",
                        help="also time Llama with a static cache + torch.compile on the first N cases")
    parser.add_argument("--llama-compile-mode", default="reduce-overhead", help="torch.compile mode for that variant")
    parser.add_argument("--out", default="benchmarks/results/generation.json")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.quick:
        cases, preset = [(1, 64), (1, 256), (4, 64)], "tiny"
    else:
        cases, preset = [(1, 2048), (1, 16384), (1, 65536), (16, 2048), (64, 2048)], "7b"
    rows: list[dict] = []
    model = build_xlstm(preset, args.backend, device, dtype)
    print(f"xLSTM {preset}: {model.num_parameters() / 1e9:.2f}B parameters", flush=True)
    impl = OURS.format(backend=args.backend)
    bench_xlstm(model, impl + "+cudagraph" if device == "cuda" else impl, cases, args.new_tokens, device,
                device == "cuda", rows)
    if device == "cuda":
        bench_xlstm(model, impl + "-eager", cases[:1], args.new_tokens, device, False, rows)
        if args.compile:
            bench_xlstm(model, impl + "+compile+cudagraph", cases, args.new_tokens, device, True, rows,
                        compile_step=True)
    del model
    _reset_memory()
    if not args.skip_llama:
        llama = build_llama(args, device, dtype)
        print(f"Llama: {sum(p.numel() for p in llama.parameters()) / 1e9:.2f}B parameters", flush=True)
        bench_llama(llama, cases, args.new_tokens, device, rows)
        if args.llama_static:
            bench_llama_static(llama, cases[:args.llama_static], args.new_tokens, device, rows,
                               args.llama_compile_mode)
        del llama
    print_table(rows)
    path = write_results(args.out, rows, dtype=str(dtype), new_tokens=args.new_tokens)
    plot(rows, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
