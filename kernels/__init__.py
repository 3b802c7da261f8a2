"""Sequence operators of the xLSTM family: pure functions on tensors with a backend dispatch.

`mlstm` (matrix memory, exp or sig input gate; parallel, chunkwise and recurrent forms), `mlstm_packed` (its parallel
form on a layer's packed projections), `mlstm_step` (one token),
`slstm` (scalar memory with head-wise recurrent mixing).
"""
from kernels.dispatch import resolve_backend
from kernels.mlstm import mlstm, mlstm_packed, mlstm_step
from kernels.slstm import slstm

__all__ = ["mlstm", "mlstm_packed", "mlstm_step", "slstm", "resolve_backend"]
