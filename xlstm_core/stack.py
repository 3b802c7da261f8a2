"""xLSTM block stack: blocks from an m/s pattern, optional reversed (bidirectional) blocks, explicit state."""
from __future__ import annotations

import torch
from torch import nn

from xlstm_core.blocks import PreUpBlock, make_block
from xlstm_core.config import xLSTMBlockStackConfig
from xlstm_core.mlstm_layer import FoldedWeights, fold_weights
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
