"""Public sLSTM operator (and the classic LSTM cell through the same machinery) with backend dispatch."""
from __future__ import annotations

import torch

from kernels.dispatch import resolve_backend
from kernels.slstm import reference
from kernels.validation import check_same_device, check_shape, check_tensor

SLSTMState = reference.SLSTMState
CELLS = tuple(reference.CELLS)


def slstm(x: torch.Tensor, *, recurrent_weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
          initial_state: SLSTMState | None = None, return_last_state: bool = False, cell: str = "slstm",
          backend: str = "auto"):
    """sLSTM over a sequence.

    x: (B, T, 4*NH*DH) gate pre-activations ordered (i, f, z, o), each gate's block head-major;
    recurrent_weight: (4, NH, DH, DH) mapping h_{t-1} of a head to that head's gate pre-activations;
    bias: (4*NH*DH,). Returns h (B, T, NH*DH) in x's dtype, or (h, (c, n, m, h_last)) with states (B, NH*DH) fp32.
    cell="lstm" runs a classic sigmoid-gated LSTM with the same layout.
    """
    check_tensor("x", x, 3, "(B, T, 4*NH*DH)")
    B, T, width = x.shape
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if width % (4 * num_heads):
        raise ValueError(f"x's last dim must be 4*NH*DH, divisible by 4*num_heads={4 * num_heads}, got {width}")
    if T == 0:
        raise ValueError("sequence length T must be at least 1")
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    hidden = width // 4
    dh = hidden // num_heads
    check_tensor("recurrent_weight", recurrent_weight, 4, "(4, NH, DH, DH)")
    check_shape("recurrent_weight", recurrent_weight, (4, num_heads, dh, dh), "(4, NH, DH, DH)")
    check_tensor("bias", bias, 1, "(4*NH*DH,)")
    check_shape("bias", bias, (width,), "(4*NH*DH,)")
    if initial_state is not None:
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 4):
            raise ValueError("initial_state must be a tuple (c, n, m, h)")
        for name, s in zip("cnmh", initial_state):
            check_shape(f"initial_state {name}", s, (B, hidden), "(B, NH*DH)")
    check_same_device(x=x, recurrent_weight=recurrent_weight, bias=bias)
    if resolve_backend(backend, x.device, x.dtype) == "triton":
        from kernels.slstm.triton import slstm_triton

        return slstm_triton(x, recurrent_weight, bias, num_heads, initial_state=initial_state,
                            return_last_state=return_last_state, cell=cell)
    return reference.slstm_recurrent(x, recurrent_weight, bias, num_heads, initial_state=initial_state,
                                     return_last_state=return_last_state, cell=cell)


__all__ = ["CELLS", "SLSTMState", "slstm"]
