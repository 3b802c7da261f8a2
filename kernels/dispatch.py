"""Backend selection shared by all operators: "auto" | "torch" | "triton"."""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Triton imports and can run here: on a CUDA device, or anywhere under TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Map the user's choice to a concrete backend.

    "auto" picks Triton on CUDA devices (when Triton imports) and PyTorch elsewhere, and PyTorch for fp64, which the
    kernels do not compute in; an explicit "triton" on a CPU tensor is allowed only under TRITON_INTERPRET=1, which
    is how the kernels are tested without a GPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        use_triton = device.type == "cuda" and dtype != torch.float64 and triton_available()
        return "triton" if use_triton else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton' requested but triton is not installed")
        if device.type != "cuda" and not interpreter_enabled():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (got device {device}); set TRITON_INTERPRET=1 to run the "
                "Triton kernels on the CPU interpreter"
            )
    return backend
