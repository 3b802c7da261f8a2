"""Tile configs of the chunkwise mLSTM kernels: one pinned config per launch case, autotuning on request.

Each kernel has a short list of configs, and each launch case (a mode of the kernel, e.g. 'h' or 'dq') a pinned entry
in it: the winner of a sweep on an H100 at DHQK=256, DHV=512 (`python -m benchmarks.mlstm_kernels --tiles`). Pinning
keeps launches free of autotuning runs and makes the configs the GPU tests check the ones the benchmark times.
KERNELS_TRITON_AUTOTUNE=1 autotunes over the whole list instead; under the interpreter one small config runs.
"""
from __future__ import annotations

import os

import triton

from kernels.dispatch import interpreter_enabled


class TileChoice:
    """A Triton kernel with its tile configs; `launch` runs it with the config its case pins (or autotunes)."""

    def __init__(self, kernel, configs: list[triton.Config], pinned: dict[str, int], small: triton.Config,
                 key: list[str], reset_to_zero: list[str] | None = None):
        self.kernel = kernel
        self.configs = configs
        self.pinned = dict(pinned)
        self.small = small
        self.tuner = triton.autotune(configs=configs, key=key, reset_to_zero=reset_to_zero)(kernel)

    def config(self, case: str) -> triton.Config:
        return self.small if interpreter_enabled() else self.configs[self.pinned[case]]

    def launch(self, case: str, grid, *args, **kwargs):
        """Run the kernel; `grid` maps the config's meta-parameters to the launch grid. A config's pre_hook (e.g.
        one that sets tensor descriptors' block shapes to its tiles) runs first. Returns the compiled kernel (its
        `n_regs` and `n_spills` are the ptxas report)."""
        if os.environ.get("KERNELS_TRITON_AUTOTUNE", "0") == "1" and not interpreter_enabled():
            return self.tuner[grid](*args, **kwargs)
        config = self.config(case)
        if config.pre_hook is not None:  # as the autotuner calls it: with the arguments and the config's values
            config.pre_hook({**dict(zip(self.kernel.arg_names, args)), **kwargs, **config.kwargs})
        return self.kernel[grid](*args, **kwargs, **config.all_kwargs())
