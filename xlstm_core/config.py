"""Plain, serialisable configs (dataclasses Hydra can compose) for block stacks and language models."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MLSTM_BLOCKS = ("pre_up", "post_up")
NORMS = ("layernorm", "rmsnorm")
CONV_MODES = ("causal1d", "grid2d")
FFN_ACTIVATIONS = ("gelu", "silu")


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


@dataclass
class xLSTMBlockStackConfig:
    """A residual stack of mLSTM and sLSTM blocks.

    mlstm_block="pre_up" is the xLSTM-paper / ViL block (LayerNorm -> up-projection, conv, mLSTM, gated output);
    "post_up" is the xLSTM-7B block (norm -> mLSTM layer with soft-capped gates -> residual -> norm -> gated FFN).
    sLSTM blocks (indices in `slstm_at`) are always post-up (sLSTM layer, then gated FFN). Blocks in `reverse_at` read
    the sequence backwards (used by bidirectional vision models); a stack with reversed blocks cannot step.
    """

    embedding_dim: int = 128
    num_blocks: int = 2
    num_heads: int = 4
    slstm_at: list[int] = field(default_factory=list)
    reverse_at: list[int] = field(default_factory=list)
    mlstm_block: str = "pre_up"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    bias: bool = False
    dropout: float = 0.0
    drop_path: float = 0.0
    final_norm: bool = True
    # pre-up mLSTM layer (xLSTM paper, ViL)
    proj_factor: float = 2.0
    conv_kernel_size: int = 4  # causal1d: taps over time (4); grid2d: k x k on the token grid (ViL uses 3)
    conv_mode: str = "causal1d"
    qkv_block_size: int = 4
    cell_norm_bias: bool = False  # a bias on the per-head norm after the cell (published ViL checkpoints have one)
    # compute q/k/v as dense matmuls with the block-diagonal weights (q and k fused into one): same parameters, more
    # FLOPs, but a few large GEMMs instead of a batched matmul over inner/qkv_block_size tiny blocks
    dense_qkv: bool = False
    # post-up mLSTM layer (xLSTM-7B)
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    gate_soft_cap: float | None = 15.0
    igate_bias_init: float = -10.0
    # sLSTM layer
    slstm_conv_kernel_size: int = 4
    # gated FFN of post-up blocks
    ffn_proj_factor: float = 4.0 / 3.0
    ffn_multiple_of: int = 64
    ffn_activation: str = "gelu"
    # sequence operator
    mlstm_variant: str = "exp"
    backend: str = "auto"
    chunk_size: int = 64
    # form of the mLSTM over whole sequences: "chunkwise" (linear in the length; Triton on CUDA), "parallel" (the
    # quadratic form in plain PyTorch, which torch.compile can fuse; for short sequences such as ViL's 196 patches)
    # or "auto" (parallel for short sequences under torch.compile, else chunkwise; xlstm_core.mlstm_layer)
    mlstm_form: str = "chunkwise"

    def __post_init__(self) -> None:
        self.slstm_at = sorted(int(i) for i in self.slstm_at)  # also turns Hydra's ListConfig into a list
        self.reverse_at = sorted(int(i) for i in self.reverse_at)
        checks = [
            (self.embedding_dim > 0 and self.num_blocks > 0, "embedding_dim and num_blocks must be positive"),
            (self.num_heads > 0 and self.embedding_dim % self.num_heads == 0,
             f"embedding_dim={self.embedding_dim} must be divisible by num_heads={self.num_heads}"),
            (all(0 <= i < self.num_blocks for i in self.slstm_at + self.reverse_at),
             f"slstm_at / reverse_at indices must lie in [0, {self.num_blocks})"),
            (self.mlstm_block in MLSTM_BLOCKS, f"mlstm_block must be one of {MLSTM_BLOCKS}"),
            (self.norm in NORMS, f"norm must be one of {NORMS}"),
            (self.conv_mode in CONV_MODES, f"conv_mode must be one of {CONV_MODES}"),
            (self.ffn_activation in FFN_ACTIVATIONS, f"ffn_activation must be one of {FFN_ACTIVATIONS}"),
            (self.mlstm_variant in ("exp", "sig"), "mlstm_variant must be 'exp' or 'sig'"),
            (self.backend in ("auto", "torch", "triton"), "backend must be 'auto', 'torch' or 'triton'"),
            (self.mlstm_form in ("auto", "chunkwise", "parallel"),
             "mlstm_form must be 'auto', 'chunkwise' or 'parallel'"),
            (0.0 <= self.dropout < 1.0 and 0.0 <= self.drop_path < 1.0, "dropout and drop_path must lie in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"xLSTMBlockStackConfig: {message}")
        if self.mlstm_block == "pre_up" and self.num_blocks > len(self.slstm_at):
            inner = self.inner_dim
            if inner % self.num_heads or inner % self.qkv_block_size:
                raise ValueError(f"xLSTMBlockStackConfig: inner dim {inner} (proj_factor * embedding_dim) must be "
                                 f"divisible by num_heads={self.num_heads} and qkv_block_size={self.qkv_block_size}")

    @property
    def inner_dim(self) -> int:
        """Width of the pre-up mLSTM layer's inner (up-projected) stream."""
        return round_up(self.proj_factor * self.embedding_dim, self.num_heads * self.qkv_block_size)

    @property
    def ffn_dim(self) -> int:
        return round_up(self.ffn_proj_factor * self.embedding_dim, self.ffn_multiple_of)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class xLSTMLMConfig:
    """An xLSTM language model: token embedding -> block stack -> final norm -> (soft-capped) logits."""

    vocab_size: int = 256
    stack: xLSTMBlockStackConfig = field(default_factory=xLSTMBlockStackConfig)
    logit_soft_cap: float | None = 30.0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stack, Mapping):  # a plain dict or Hydra's DictConfig
            self.stack = xLSTMBlockStackConfig(**self.stack)
        if self.vocab_size < 1:
            raise ValueError(f"xLSTMLMConfig: vocab_size must be positive, got {self.vocab_size}")
        if self.stack.reverse_at:
            raise ValueError("xLSTMLMConfig: a causal language model cannot have reversed blocks")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "xLSTMLMConfig":
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "xLSTMLMConfig":
        """Named configs: "7b" (xLSTM-7B shapes), "tiny" and "small" (same architecture, for tests and demos)."""
        if name not in LM_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(LM_PRESETS)}")
        vocab, stack = LM_PRESETS[name]
        stack_kw = {**XLSTM7B_STYLE, **stack, **overrides.pop("stack", {})}
        return cls(vocab_size=overrides.pop("vocab_size", vocab), stack=xLSTMBlockStackConfig(**stack_kw), **overrides)


# The xLSTM-7B architecture choices; sizes come from the presets below.
XLSTM7B_STYLE = dict(mlstm_block="post_up", norm="rmsnorm", norm_eps=1e-6, bias=False, qk_dim_factor=0.5,
                     v_dim_factor=1.0, gate_soft_cap=15.0, igate_bias_init=-10.0, ffn_proj_factor=8.0 / 3.0,
                     ffn_multiple_of=64, ffn_activation="silu")
LM_PRESETS: dict[str, tuple[int, dict[str, Any]]] = {
    "7b": (50304, dict(embedding_dim=4096, num_heads=8, num_blocks=32)),
    "small": (50304, dict(embedding_dim=768, num_heads=4, num_blocks=12)),
    "tiny": (256, dict(embedding_dim=64, num_heads=2, num_blocks=2, ffn_multiple_of=16)),
}
