"""xLSTM block stack: blocks from an m/s pattern, optional reversed (bidirectional) blocks, explicit state."""
from __future__ import annotations

import torch
from timm.layers import DropPath, drop_path
from torch import nn

from kernels.dispatch import resolve_backend
from xlstm_core.blocks import PreUpBlock, make_block
from xlstm_core.config import xLSTMBlockStackConfig
from xlstm_core.mlstm_layer import BIAS_COLUMNS, FoldedWeights, fold_weights
from xlstm_core.norms import make_norm
from xlstm_core.state import StackState


class xLSTMBlockStack(nn.Module):
    """Maps (B, T, E) -> (B, T, E). Causal unless some blocks are reversed; then it cannot carry state."""

    def __init__(self, cfg: xLSTMBlockStackConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(make_block(cfg, i) for i in range(cfg.num_blocks))
        self.reversed = [i in cfg.reverse_at for i in range(cfg.num_blocks)]
        self.final_norm = make_norm(cfg.norm, cfg.embedding_dim, cfg.norm_eps, cfg.bias) if cfg.final_norm else None

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != self.cfg.embedding_dim:
            raise ValueError(f"expected input (B, T, {self.cfg.embedding_dim}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, state: StackState | None = None, return_state: bool = False,
                grid: tuple[int, int] | None = None):
        """Run all blocks. With return_state (or a given state) returns (y, new_state) and continues from `state`."""
        self._check_input(x)
        carry = return_state or state is not None
        if carry and any(self.reversed):
            raise ValueError("a stack with reversed blocks is not causal and carries no recurrent state")
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries, expected one per block ({len(self.blocks)})")
        new_state = []
        folds = {} if carry else self._folded_weights()
        if not carry and self._fuses_residual_norms(x):
            return self._forward_fused(x, grid, folds)
        for index, block in enumerate(self.blocks):
            folded = {"folded": folds[index]} if index in folds else {}
            if carry:
                x, block_state = block(x, None if state is None else state[index], True, grid)
                new_state.append(block_state)
            elif self.reversed[index]:
                x = block(x.flip(1), grid=grid, **folded).flip(1)
            else:
                x = block(x, grid=grid, **folded)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (x, new_state) if carry else x

    def _fuses_residual_norms(self, x: torch.Tensor) -> bool:
        """Whether each residual add and the LayerNorm after it run as one op (xlstm_core/add_norm_triton.py): pre-up
        blocks with LayerNorms and a final LayerNorm, on the Triton backend, at widths the op takes."""
        from xlstm_core.add_norm_triton import fits

        return (isinstance(self.final_norm, nn.LayerNorm) and fits(self.cfg.embedding_dim)
                and all(isinstance(b, PreUpBlock) and isinstance(b.norm, nn.LayerNorm) and b.norm.elementwise_affine
                        for b in self.blocks) and self.final_norm.elementwise_affine
                and resolve_backend(self.cfg.backend, x.device, x.dtype) == "triton")

    def _forward_fused(self, x: torch.Tensor, grid: tuple[int, int] | None,
                       folds: dict[int, FoldedWeights]) -> torch.Tensor:
        """The blocks with the residual stream kept in token order: each add_norm adds a block's output (read in
        that block's order, DropPath's factor applied) and writes the next block's normalised input in its order,
        with the up-projection's ones columns in training (`mlstm_layer._up_projection`), in the dtype autocast
        would cast it to for the up-projection. The final norm's output is in x's dtype, as LayerNorm's under
        autocast."""
        from xlstm_core.add_norm_triton import add_norm

        device = x.device.type
        input_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        ones = BIAS_COLUMNS if torch.is_grad_enabled() and self.cfg.bias else 0
        norm, width = self.blocks[0].norm, x.shape[-1]
        _, h = add_norm(x, None, norm.weight, norm.bias, norm.eps, flip_out=self.reversed[0], ones=ones,
                        out_dtype=input_dtype)
        for index, block in enumerate(self.blocks):
            folded = {"folded": folds[index]} if index in folds else {}
            y = block.layer(h[..., :width], grid=grid, x_ones=h if ones else None, **folded)
            last = index + 1 == len(self.blocks)
            norm = self.final_norm if last else self.blocks[index + 1].norm
            x, h = add_norm(x, y, norm.weight, norm.bias, norm.eps, flip_y=self.reversed[index],
                            flip_out=not last and self.reversed[index + 1], ones=0 if last else ones,
                            scale=_drop_path_scale(block.drop_path, y), out_dtype=x.dtype if last else input_dtype)
        return h

    def _folded_weights(self) -> dict[int, FoldedWeights]:
        """{block index: folded projection weights} of the pre-up layers with dense q/k/v, computed in one batch
        where each layer would fold its own at this call (with autograd, or traced by torch.compile); empty where
        the layers reuse their cached folds (eager inference) or there is at most one such layer."""
        if not (torch.is_grad_enabled() or torch.compiler.is_compiling()):
            return {}
        pre_up = {index: block.layer for index, block in enumerate(self.blocks)
                  if isinstance(block, PreUpBlock) and block.layer.cfg.dense_qkv}
        if len(pre_up) < 2:
            return {}
        return dict(zip(pre_up, fold_weights(list(pre_up.values()))))

    def step(self, x_t: torch.Tensor, state: StackState | None = None) -> tuple[torch.Tensor, StackState]:
        """One timestep: x_t (B, E) -> (y_t (B, E), new_state). Equals the full forward at that position."""
        if x_t.ndim != 2:
            raise ValueError(f"step expects one timestep (B, {self.cfg.embedding_dim}), got {tuple(x_t.shape)}")
        y, state = self.forward(x_t.unsqueeze(1), state, return_state=True)
        return y.squeeze(1), state


def _drop_path_scale(module: nn.Module, y: torch.Tensor) -> torch.Tensor | None:
    """timm DropPath's per-sample factor (B,) for y: timm's drop_path on ones, which draws the same random numbers as
    the module's forward on y; None where every sample is kept (no DropPath, eval mode, rate 0)."""
    if not isinstance(module, DropPath) or not module.training or module.drop_prob == 0.0:
        return None
    return drop_path(y.new_ones(y.shape[0]), module.drop_prob, True, module.scale_by_keep)
