"""When the chunkwise kernels may load through TMA tensor descriptors (Hopper's bulk copies), the descriptor type
itself (Triton >= 3.4; without it every kernel keeps its pointer loads), and the two layouts they describe."""
from __future__ import annotations

import torch

from kernels.dispatch import interpreter_enabled

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None


def tma_applies(*tensors: torch.Tensor) -> bool:
    """16-bit tensors on an sm_90+ GPU (or under the Triton interpreter), 16-byte aligned with rows of 16-byte
    multiples (TMA's rules), and fewer than 2**31 rows (descriptor coordinates are 32-bit)."""
    if TensorDescriptor is None or any(t.dtype not in (torch.float16, torch.bfloat16) for t in tensors):
        return False
    device = tensors[0].device
    if not interpreter_enabled() and not (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9):
        return False
    return all(t.shape[-1] % 8 == 0 and t.data_ptr() % 16 == 0 and t.numel() // t.shape[-1] < 2**31
               for t in tensors)


def rows_descriptor(t: torch.Tensor) -> TensorDescriptor:
    """Descriptor of a contiguous tensor as one matrix of all its rows (..., D) -> (rows, D). The block shape is a
    placeholder: a kernel config's pre_hook sets its tiles."""
    return TensorDescriptor(t, [t.numel() // t.shape[-1], t.shape[-1]], [t.shape[-1], 1], [8, 8])


def states_descriptor(t: torch.Tensor) -> TensorDescriptor:
    """Descriptor of contiguous per-slot states (slots, NH, R, C) as (slots * NH, R, C), so that a tile never
    reaches into the next state (placeholder block, as in `rows_descriptor`)."""
    slots, NH, R, C = t.shape
    return TensorDescriptor(t, [slots * NH, R, C], [R * C, C, 1], [1, 8, 8])
