"""Where a decode step spends GPU time: kernel table of one eager step of the 7B-shaped model (bf16, batch 1),
and the bytes-moved floor it is compared against. `python -m benchmarks.profile_decode [--backend torch]`."""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.generation import build_xlstm


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--preset", default="7b")
    args = parser.parse_args(argv)
    model = build_xlstm(args.preset, args.backend, "cuda", torch.bfloat16)
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    _, state = model.prefill(torch.randint(0, 100, (1, 128), device="cuda"))
    token = torch.zeros(1, dtype=torch.long, device="cuda")
    for _ in range(3):
        model.step(token, state)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model.step(token, state)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    total_us = sum(e.device_time_total for e in prof.key_averages())
    print(f"weights {weight_gb:.2f} GB; device time of one step {total_us / 1e3:.2f} ms; "
          f"floor at 3.0 TB/s {weight_gb / 3.0:.2f} ms")


if __name__ == "__main__":
    main()
