"""mLSTM layers: the pre-up layer of the xLSTM paper / ViL and the post-up layer of xLSTM-7B."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels import mlstm, mlstm_packed, mlstm_step
from kernels.dispatch import resolve_backend
from kernels.mlstm.packed_layout import unpack
from xlstm_core.config import xLSTMBlockStackConfig
from xlstm_core.conv import CausalConv1d, GridConv2d
from xlstm_core.linear import BlockDiagonalLinear, block_diagonal
from xlstm_core.norm_gate import norm_skip_gate
from xlstm_core.norms import MultiHeadNorm
from xlstm_core.state import LayerState


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap): bounds pre-activations smoothly (xLSTM-7B gates and logits)."""
    return x if cap is None else cap * torch.tanh(x / cap)


def small_init_(weight: torch.Tensor, dim: int) -> None:
    nn.init.normal_(weight, std=math.sqrt(2 / (5 * dim)))


def wang_init_(weight: torch.Tensor, dim: int, num_blocks: int) -> None:
    nn.init.normal_(weight, std=2 / num_blocks / math.sqrt(dim))


# Up to this many tokens (ViL's 196 patches at 224^2) "auto" takes the parallel form where it is fused: the Triton
# kernel (kernels/mlstm/parallel_triton.py, eager and compiled) or, on the PyTorch backend, inductor under
# torch.compile. Eager PyTorch keeps the chunkwise form, which does not materialise (S, S) maps per head.
PARALLEL_MAX_LEN = 256


def sequence_form(cfg: xLSTMBlockStackConfig, length: int, device: torch.device) -> str:
    """The mLSTM form for a sequence of `length` tokens on `device`: cfg.mlstm_form itself, or for "auto" the
    parallel form for at most PARALLEL_MAX_LEN tokens when the backend resolves to Triton or torch.compile traces
    the layer, and chunkwise else."""
    if cfg.mlstm_form != "auto":
        return cfg.mlstm_form
    fused = resolve_backend(cfg.backend, device) == "triton" or torch.compiler.is_compiling()
    return "parallel" if length <= PARALLEL_MAX_LEN and fused else "chunkwise"


def run_mlstm_cell(cfg: xLSTMBlockStackConfig, q, k, v, igate, fgate, state, return_state: bool):
    """Run the mLSTM operator on (B, T, NH, D) projections and (B, T, NH) gates; returns h (B, T, NH, DHV).

    A single token with a state to carry takes the step kernel; everything else the operator in `cfg.mlstm_form`
    (see `sequence_form` for "auto").
    """
    if q.shape[1] == 1 and (state is not None or return_state):
        h, new_state = mlstm_step(q[:, 0], k[:, 0], v[:, 0], igate=igate[:, 0], fgate=fgate[:, 0], state=state,
                                  variant=cfg.mlstm_variant, backend=cfg.backend)
        return h.unsqueeze(1), new_state
    out = mlstm(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), igate=igate.transpose(1, 2),
                fgate=fgate.transpose(1, 2), variant=cfg.mlstm_variant,
                form=sequence_form(cfg, q.shape[1], q.device), chunk_size=cfg.chunk_size, initial_state=state,
                return_last_state=return_state, backend=cfg.backend)
    h, new_state = out if return_state else (out, None)
    return h.transpose(1, 2), new_state


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


# The folded q/k/v GEMMs' output widths are padded to a multiple of this many columns. q, k and v are views into those
# outputs, and Triton vectorises a load only when it can prove the row stride divisible by 16 elements: at ViL-T's
# width 776 (2 * 384 + 8 gate columns) the fused parallel cell compiled to 16-bit scalar loads (sm_90 SASS: 192
# LDG.E.U16 against 24 LDG.E.128 at width 784) and took 255 registers instead of 221.
COLUMN_ALIGN = 16


# The packed up-projection's width ([x_inner | z | v | gate shares], 1,168 columns at ViL-T) is padded to a multiple
# of this many columns. Inductor pads the row stride of every buffer wider than 1,024 elements to a multiple of 128
# bytes (`comprehensive_padding`); an unpadded width made it copy the GEMM's output into a padded buffer (ATen's addmm
# then adds the bias in a separate pass) and copy the v and x_inner views back to the exact strides the custom ops
# were traced with: ~0.2 ms per ViL-T block on an H100.
UP_COLUMN_ALIGN = 64


def _linear_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear over x's tokens as one 2-D product. x_inner is a strided half of the up-projection; as a 3-D input
    it went to a batched product with the weight broadcast (inductor: bmm, then the bias in a separate pass over the
    output, 0.6 ms per ViL-T inference step), while its (tokens, features) view is a plain GEMM with the bias fused."""
    return F.linear(x.reshape(-1, x.shape[-1]), weight, bias).unflatten(0, x.shape[:-1])


# Input columns the up-projection appends in training (`_up_projection`): one of ones for the bias and zeros that keep
# the rows 16-byte aligned for cuBLAS.
BIAS_COLUMNS = 8


def _up_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   x_ones: torch.Tensor | None = None) -> torch.Tensor:
    """`_linear_2d(x, weight, bias)`; in training the bias rides in the GEMM as a weight column over an input column
    of ones, so that the weight-gradient GEMM, which reads the output gradient anyway, also forms the bias gradient.
    Autograd's linear sums that gradient in a pass of its own: at ViL-T (1,216 columns, batch 256) 40 us per block on
    an H100. The wider input costs a pass of its own too (inductor writes it apart from the LayerNorm) and the
    weight-gradient GEMM takes other tiles; net, the compiled ViL-T training step went 39.3 -> 38.6 ms of GPU time
    and 1.0-1.5% more img/s with CUDA graphs; ViL-S and ViL-B did not change (within 0.4%;
    benchmarks/results/vil_ab_s21.json). `x_ones`: that wider input where the caller wrote it already (the block
    stack's add + LayerNorm op writes the ones with the normalised x)."""
    if bias is None or not torch.is_grad_enabled():
        return _linear_2d(x, weight, bias)
    x_ones = (F.pad(x.reshape(-1, x.shape[-1]), (0, BIAS_COLUMNS), value=1.0) if x_ones is None
              else x_ones.reshape(-1, x.shape[-1] + BIAS_COLUMNS))
    w_bias = F.pad(torch.cat([weight, bias[:, None]], dim=1), (0, BIAS_COLUMNS - 1))
    return F.linear(x_ones, w_bias).unflatten(0, x.shape[:-1])


class FoldedWeights(NamedTuple):
    """The pre-up layer's projections with the block-diagonal q/k/v and gate weights folded in (y = x w + b for the
    (in, out) weights, F.linear(x, w_up, b_up) for the (out, in) up-projection): w_conv gives [q | k | their gate
    shares] from the conv branch, w_inner [v | its gate shares] from the inner stream, and w_up [inner | z | v | its
    gate shares | zero padding] straight from the layer input."""

    w_conv: torch.Tensor
    b_conv: torch.Tensor
    w_inner: torch.Tensor
    b_inner: torch.Tensor | None
    w_up: torch.Tensor
    b_up: torch.Tensor | None


def _pad_columns(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """weight (..., in, out) and bias (..., out) with zero columns appended up to a multiple of COLUMN_ALIGN
    outputs."""
    extra = -weight.shape[-1] % COLUMN_ALIGN
    return F.pad(weight, (0, extra)), None if bias is None else F.pad(bias, (0, extra))


class mLSTMPreUpLayer(nn.Module):
    """xLSTM-paper mLSTM layer: up-project, conv + SiLU for q/k, block-diagonal q/k/v, gates from (q, k, v),
    per-head norm, learnable skip, SiLU output gate (those three fused: xlstm_core/norm_gate.py), down-project.
    conv_mode="grid2d" is ViL's 3x3 token-grid conv."""

    def __init__(self, cfg: xLSTMBlockStackConfig):
        super().__init__()
        self.cfg = cfg
        E, inner, NH = cfg.embedding_dim, cfg.inner_dim, cfg.num_heads
        self.proj_up = nn.Linear(E, 2 * inner, bias=cfg.bias)
        if cfg.conv_mode == "causal1d":
            self.conv = CausalConv1d(inner, cfg.conv_kernel_size)
        else:
            self.conv = GridConv2d(inner, cfg.conv_kernel_size)
        qkv_blocks = inner // cfg.qkv_block_size
        self.q, self.k, self.v = (BlockDiagonalLinear(inner, qkv_blocks, bias=cfg.bias) for _ in range(3))
        self.igate = nn.Linear(3 * inner, NH)
        self.fgate = nn.Linear(3 * inner, NH)
        self.norm = MultiHeadNorm(NH, inner // NH, "layernorm", eps=1e-6)
        self.norm_bias = nn.Parameter(torch.zeros(inner)) if cfg.cell_norm_bias else None
        self.skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, E, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        cfg = self.cfg
        small_init_(self.proj_up.weight, cfg.embedding_dim)
        wang_init_(self.proj_down.weight, cfg.inner_dim, cfg.num_blocks)
        for gate in (self.igate, self.fgate):
            nn.init.zeros_(gate.weight)
        nn.init.normal_(self.igate.bias, std=0.1)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, cfg.num_heads))
        for lin in (self.proj_up, self.proj_down):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        if self.norm_bias is not None:
            nn.init.zeros_(self.norm_bias)

    def _projections(self, x_conv: torch.Tensor, x_inner: torch.Tensor, folded: FoldedWeights | None = None):
        """q, k (from the conv branch), v (from the inner stream) and the input / forget gate pre-activations,
        which read cat(q, k, v). With dense_qkv they are views of `_packed_projections`' two GEMM outputs."""
        if not self.cfg.dense_qkv:
            q, k, v = self.q(x_conv), self.k(x_conv), self.v(x_inner)
            gate_in = torch.cat([q, k, v], dim=-1)
            return q, k, v, self.igate(gate_in), self.fgate(gate_in)
        head_dim = self.cfg.inner_dim // self.cfg.num_heads
        q, k, v, (igate_qk, fgate_qk, igate_v, fgate_v) = unpack(
            *self._packed_projections(x_conv, x_inner, folded), self.cfg.num_heads, head_dim, head_dim)
        tokens = lambda t: t.transpose(1, 2)  # (B, NH, S, ...) views back to the token-major layout
        return (*(tokens(t).flatten(2) for t in (q, k, v)), tokens(igate_qk + igate_v), tokens(fgate_qk + fgate_v))

    def _packed_projections(self, x_conv: torch.Tensor, x_inner: torch.Tensor,
                            folded: FoldedWeights | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 2 inner + 2 NH + padding) = [q | k | gate shares of q, k] from x_conv and (B, T, inner + 2 NH +
        padding) = [v | gate shares of v] from x_inner: two GEMMs, the gate weights folded into the block-diagonal
        q/k/v weights (the gates' share of q is x_conv (Wq Gq) + bq Gq), so neither the (B, T, 3 inner) gate input
        nor GEMMs with NH outputs are formed; this is the layout `kernels.mlstm_packed` takes. The folded weights
        take ~13 small kernels forward and about as many backward (eager ViL is launch-bound); inference reuses
        them (`_folded_weights`); a block stack folds all its layers' weights at once (`fold_weights`)."""
        folded = self._folded_weights() if folded is None else folded
        return (_linear_2d(x_conv, folded.w_conv.t(), folded.b_conv),
                _linear_2d(x_inner, folded.w_inner.t(), folded.b_inner))

    def _folded_weights(self) -> FoldedWeights:
        """`_fold_weights()`; without autograd (inference) kept until a parameter changes (an in-place update bumps
        its version, a move or a load gives it new storage), so inference steps skip the small weight kernels.
        The cache holds the dense folded weights: ~1.6 MB per ViL-T layer, ~35 MB per ViL-B layer (fp32). Traced
        calls recompute: inductor folds them into its graph."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._fold_weights()
        modules = (self.q, self.k, self.v, self.igate, self.fgate, self.proj_up)
        sources = [m.weight for m in modules] + [m.bias for m in modules if m.bias is not None]
        key = tuple((p.data_ptr(), p._version) for p in sources)
        if getattr(self, "_folded_key", None) != key:
            self._folded, self._folded_key = self._fold_weights(), key
        return self._folded

    def _fold_weights(self) -> FoldedWeights:
        """This layer's `fold_weights`."""
        return fold_weights([self])[0]

    def _takes_packed_path(self, x: torch.Tensor, state: LayerState | None, return_state: bool) -> bool:
        """Whether the cell runs on packed projections (`kernels.mlstm_packed`): dense_qkv, the parallel form and no
        state. Its backward then writes the GEMMs' output gradients whole (no concatenation)."""
        return (self.cfg.dense_qkv and state is None and not return_state
                and sequence_form(self.cfg, x.shape[1], x.device) == "parallel")

    def _takes_fused_conv(self, x_inner: torch.Tensor, grid: tuple[int, int] | None) -> bool:
        """Whether the packed path's grid conv, SiLU and block-diagonal q/k run fused on Triton
        (xlstm_core/conv_qk_triton.py): a grid conv, q/k blocks that fit the kernels' tiles, and the Triton backend
        for x_inner's device and dtype."""
        from xlstm_core.conv_qk_triton import takes_blocks

        return (grid is not None and isinstance(self.conv, GridConv2d)
                and takes_blocks(self.cfg.inner_dim, self.cfg.qkv_block_size)
                and x_inner.dtype in (torch.float16, torch.bfloat16, torch.float32)
                and resolve_backend(self.cfg.backend, x_inner.device, x_inner.dtype) == "triton")

    def _grid_conv(self, x_inner: torch.Tensor, grid: tuple[int, int],
                   folded: FoldedWeights | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x_conv = silu(grid conv(x_inner)) and, on the packed path (`folded` given) where the conv and the
        block-diagonal q/k projection run fused (`_takes_fused_conv`) without a graph to record (training takes the
        mixer op), [q | k | gate shares] from the same op; else None for them."""
        sources = () if folded is None else (x_inner, folded.w_conv, folded.b_conv, *self.conv.parameters())
        if folded is not None and not (torch.is_grad_enabled() and any(t.requires_grad for t in sources)) \
                and self._takes_fused_conv(x_inner, grid):
            from xlstm_core.conv_qk_triton import grid_conv_qk_triton

            return grid_conv_qk_triton(x_inner, self.conv.conv.weight, self.conv.conv.bias, folded.w_conv.t(),
                                       folded.b_conv, grid, self.cfg.qkv_block_size)
        return self.conv.conv_silu(x_inner, grid, self.cfg.backend), None

    def _takes_fused_mixer(self, up: torch.Tensor, grid: tuple[int, int] | None) -> bool:
        """Whether the packed path's middle runs as one Triton op (xlstm_core/mixer_triton.py): in training (with a
        gradient to compute), with the fused conv (`_takes_fused_conv`) of a 3 x 3 kernel and up to MAX_LEN tokens.
        Inference keeps separate fused ops, which need no residuals."""
        from kernels.mlstm.parallel_triton import MAX_LEN

        return (torch.is_grad_enabled() and self._takes_fused_conv(up, grid)
                and self.conv.conv.kernel_size == (3, 3) and up.shape[1] <= MAX_LEN)

    def _takes_fused_cell_gate(self, qk: torch.Tensor) -> bool:
        """Whether the packed path's cell and output chain run as one Triton kernel
        (xlstm_core/cell_gate_triton.py): without autograd (inference; training takes the mixer op or the separate
        ops, whose backwards read h), on the Triton backend, for heads and lengths it takes (`fuses`)."""
        from xlstm_core.cell_gate_triton import fuses

        return (not torch.is_grad_enabled() and fuses(self.cfg.inner_dim // self.cfg.num_heads, qk.shape[1])
                and resolve_backend(self.cfg.backend, qk.device, qk.dtype) == "triton")

    def forward(self, x: torch.Tensor, state: LayerState | None = None, return_state: bool = False,
                grid: tuple[int, int] | None = None, folded: FoldedWeights | None = None,
                x_ones: torch.Tensor | None = None):
        """`folded`: this layer's folded weights where the caller computed them (`fold_weights`), else the layer
        folds (or reuses) its own. `x_ones`: x followed by BIAS_COLUMNS columns of ones (B, T, E + BIAS_COLUMNS),
        where the caller wrote them (`_up_projection`)."""
        NH, inner = self.cfg.num_heads, self.cfg.inner_dim
        packed = self._takes_packed_path(x, state, return_state)
        if packed:
            folded = self._folded_weights() if folded is None else folded
            up = _up_projection(x, folded.w_up, folded.b_up, x_ones)  # [x_inner | z | v | gate shares | padding]
            if self._takes_fused_mixer(up, grid):
                from xlstm_core.mixer_triton import mixer_triton

                y = mixer_triton(up, self.conv.conv.weight, self.conv.conv.bias, folded.w_conv.t(), folded.b_conv,
                                 self.norm.weight, self.norm_bias, self.skip, grid, self.cfg.qkv_block_size, NH,
                                 folded.w_inner.shape[1], self.cfg.mlstm_variant, self.norm.eps)
                return self.dropout(self.proj_down(y))
            x_inner, z = up[..., :inner], up[..., inner : 2 * inner]
            # v's own width (16-column aligned): the packed op writes its padding's gradient, autograd the rest
            v_gates = up[..., 2 * inner : 2 * inner + folded.w_inner.shape[1]]
        else:
            x_inner, z = self.proj_up(x).chunk(2, dim=-1)
        if isinstance(self.conv, CausalConv1d):
            x_conv, conv_state = self.conv(x_inner, None if state is None else state.conv)
            x_conv, qk_gates = F.silu(x_conv), None
        else:
            if state is not None or return_state:
                raise ValueError("a grid2d (non-causal) mLSTM layer has no recurrent state to carry")
            if grid is None:
                raise ValueError("conv_mode='grid2d' needs the token grid: pass grid=(H, W)")
            conv_state = None
            x_conv, qk_gates = self._grid_conv(x_inner, grid, folded if packed else None)
        if packed:
            head_dim = inner // NH
            if qk_gates is None:
                qk_gates = _linear_2d(x_conv, folded.w_conv.t(), folded.b_conv)
            if self._takes_fused_cell_gate(qk_gates):
                from xlstm_core.cell_gate_triton import mlstm_packed_norm_gate

                y = mlstm_packed_norm_gate(qk_gates, v_gates, x_conv, z, self.norm.weight, self.norm_bias, self.skip,
                                           num_heads=NH, variant=self.cfg.mlstm_variant, eps=self.norm.eps)
                return self.dropout(self.proj_down(y))
            h = mlstm_packed(qk_gates, v_gates, num_heads=NH, head_dim_qk=head_dim, head_dim_v=head_dim,
                             variant=self.cfg.mlstm_variant, backend=self.cfg.backend)
            cell_state = None
        else:
            q, k, v, igate, fgate = self._projections(x_conv, x_inner, folded)
            h, cell_state = run_mlstm_cell(self.cfg, _heads(q, NH), _heads(k, NH), _heads(v, NH), igate, fgate,
                                           None if state is None else state.cell, return_state)
        h = norm_skip_gate(h, x_conv, z, self.norm.weight, self.norm_bias, self.skip, eps=self.norm.eps,
                           backend=self.cfg.backend)
        y = self.dropout(self.proj_down(h))
        return (y, LayerState(conv_state, cell_state)) if return_state else y


class _DenseGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous. A parameter read through a stack or a transposed cat
    gets its gradient as a strided slice, which AccumulateGrad copies into the parameter's layout outside the
    compiled graph: 120 copies per ViL-T training step (the q / k / v blocks and the gate weights). Made here, the
    copy is part of the graph."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def fold_weights(layers: Sequence[mLSTMPreUpLayer]) -> list[FoldedWeights]:
    """The folded weights (`FoldedWeights`) of pre-up layers of one configuration, computed for all of them at once:
    the fold is ~14 small kernels forward (and about as many backward), so a stack that folds per layer at every
    traced or differentiated call pays them per layer (~1 ms of a 12.6 ms compiled ViL-T inference step on an
    H100). Columns of w_conv and w_inner are padded with zeros to a multiple of COLUMN_ALIGN, the up-projection's
    rows to UP_COLUMN_ALIGN (see there). v is linear in x_inner = x W_ui^T + b_ui, so w_up stacks the
    up-projection's rows and those of (W_ui^T w_inner)^T, and b_up ends in b_ui w_inner + b_inner: v and its gate
    shares come out of the up-projection's GEMM (192 inputs at ViL-T) instead of a GEMM over x_inner (384)."""
    cfg = layers[0].cfg
    inner, NH = cfg.inner_dim, cfg.num_heads
    stack = lambda get: torch.stack([get(layer) for layer in layers])
    dense = _DenseGrad.apply
    blocks = stack(lambda m: torch.stack([dense(m.q.weight), dense(m.k.weight), dense(m.v.weight)], dim=2))
    w_qk, w_v = block_diagonal(blocks, batch_dims=1).split([2 * inner, inner], dim=-1)  # blocks: (L, n, d, 3, e)
    gate_w = stack(lambda m: torch.cat([dense(m.igate.weight), dense(m.fgate.weight)])).mT  # (L, 3 inner, 2 NH)
    g_qk, g_v = gate_w.split([2 * inner, inner], dim=-2)
    w_conv = torch.cat([w_qk, w_qk @ g_qk], dim=-1)  # (L, inner, 2 inner + 2 NH)
    w_inner = torch.cat([w_v, w_v @ g_v], dim=-1)  # (L, inner, inner + 2 NH)
    b_gates = stack(lambda m: torch.cat([m.igate.bias, m.fgate.bias]))
    if cfg.bias:
        b_qkv = stack(lambda m: torch.cat([m.q.bias, m.k.bias, m.v.bias]))
        b_qk, b_v = b_qkv.split([2 * inner, inner], dim=-1)
        b_conv = torch.cat([b_qk, b_gates + (b_qkv.unsqueeze(-2) @ gate_w).squeeze(-2)], dim=-1)
        b_inner = F.pad(b_v, (0, 2 * NH))
    else:
        b_conv, b_inner = F.pad(b_gates, (2 * inner, 0)), None
    w_conv, b_conv = _pad_columns(w_conv, b_conv)
    w_inner, b_inner = _pad_columns(w_inner, b_inner)
    w_up = stack(lambda m: m.proj_up.weight)  # (L, 2 inner, E)
    extra = -(2 * inner + w_inner.shape[-1]) % UP_COLUMN_ALIGN  # zero rows, so that no unaligned row is formed
    w_up_v = w_inner.mT @ w_up[:, :inner]
    w_up = torch.cat([w_up, w_up_v, w_up.new_zeros(len(layers), extra, w_up.shape[-1])], dim=-2)  # (L, out, in)
    b_up = None
    if cfg.bias:
        b_up = stack(lambda m: m.proj_up.bias)
        b_v = (b_up[:, None, :inner] @ w_inner).squeeze(-2) + b_inner
        b_up = torch.cat([b_up, b_v, b_up.new_zeros(len(layers), extra)], dim=-1)
    return [FoldedWeights(*(None if t is None else t[i] for t in (w_conv, b_conv, w_inner, b_inner, w_up, b_up)))
            for i in range(len(layers))]


class mLSTMPostUpLayer(nn.Module):
    """xLSTM-7B mLSTM layer: q/k (dim E*qk_dim_factor), v (E*v_dim_factor) and a sigmoid output gate straight from
    the normed input, soft-capped input/forget gates, per-head layer norm, output projection. No conv, no
    up-projection (the block's FFN does that after the cell).

    q, k, v and the output gate come from one fused projection: at decode time (batch 1) four small matrix-vector
    products reach well under half the memory bandwidth that one product of their combined size does.
    """

    def __init__(self, cfg: xLSTMBlockStackConfig):
        super().__init__()
        self.cfg = cfg
        E, NH = cfg.embedding_dim, cfg.num_heads
        self.qk_dim = int(E * cfg.qk_dim_factor)
        self.v_dim = int(E * cfg.v_dim_factor)
        if self.qk_dim % NH or self.v_dim % NH:
            raise ValueError(f"q/k dim {self.qk_dim} and v dim {self.v_dim} must be divisible by num_heads={NH}")
        self.split_sizes = [self.qk_dim, self.qk_dim, self.v_dim, self.v_dim]  # q, k, v, output gate
        self.qkvo = nn.Linear(E, sum(self.split_sizes), bias=cfg.bias)
        self.gates = nn.Linear(E, 2 * NH, bias=True)  # input gates, then forget gates
        self.norm = MultiHeadNorm(NH, self.v_dim // NH, "layernorm", eps=cfg.norm_eps)
        self.out = nn.Linear(self.v_dim, E, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """xLSTM-7B init: small init for q/k/v, zero weights for all gates, input-gate bias igate_bias_init,
        forget-gate bias linspace(3, 6) over heads, Wang init for the output projection."""
        cfg = self.cfg
        E, NH = cfg.embedding_dim, cfg.num_heads
        small_init_(self.qkvo.weight, E)
        with torch.no_grad():
            self.qkvo.weight[2 * self.qk_dim + self.v_dim :].zero_()
            self.gates.weight.zero_()
            self.gates.bias[:NH].fill_(cfg.igate_bias_init)
            self.gates.bias[NH:].copy_(torch.linspace(3.0, 6.0, NH))
        wang_init_(self.out.weight, self.v_dim, cfg.num_blocks)
        for lin in (self.qkvo, self.out):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, state: LayerState | None = None, return_state: bool = False,
                grid: tuple[int, int] | None = None):
        NH, cap = self.cfg.num_heads, self.cfg.gate_soft_cap
        q, k, v, o = self.qkvo(x).split(self.split_sizes, dim=-1)
        i, f = soft_cap(self.gates(x), cap).chunk(2, dim=-1)
        h, cell_state = run_mlstm_cell(self.cfg, _heads(q, NH), _heads(k, NH), _heads(v, NH), i, f,
                                       None if state is None else state.cell, return_state)
        y = self.dropout(self.out(torch.sigmoid(o) * self.norm(h)))
        return (y, LayerState(None, cell_state)) if return_state else y
