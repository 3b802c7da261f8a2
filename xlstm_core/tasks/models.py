"""The models the synthetic and language-modelling experiments compare, built by architecture name.

"xlstm[a:b]" follows the xLSTM paper's notation: a:b is the ratio of mLSTM to sLSTM blocks, so xlstm[1:0] has only
mLSTM blocks, xlstm[0:1] only sLSTM blocks and xlstm[1:1] alternates them. "transformer" (Llama-style) and "lstm"
are sized to the parameter count of a reference xLSTM of the same width and depth.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xlstm_core.baselines import (
    LSTMLM,
    LSTMConfig,
    TransformerConfig,
    TransformerLM,
    count_parameters,
    match_parameters,
)
from xlstm_core.config import xLSTMBlockStackConfig, xLSTMLMConfig
from xlstm_core.lm import xLSTMLM

_RATIO = re.compile(r"^xlstm\[(\d+):(\d+)\]$")
BASELINES = ("transformer", "lstm")


@dataclass
class ModelSpec:
    """One entry of an experiment's model list: architecture, display name, extra stack overrides, and learning
    rates to sweep (None: the experiment's)."""

    arch: str
    name: str | None = None
    stack: dict[str, Any] = field(default_factory=dict)
    lrs: list[float] | None = None

    def __post_init__(self) -> None:
        self.arch = self.arch.lower()
        if self.arch not in BASELINES:
            parse_ratio(self.arch)
        if self.name is None:
            self.name = {"transformer": "Llama", "lstm": "LSTM"}.get(self.arch, self.arch.replace("xlstm", "xLSTM"))

    @classmethod
    def parse(cls, entry: str | dict[str, Any] | ModelSpec) -> ModelSpec:
        """From an architecture string or a dict of fields (as written in a Hydra config)."""
        if isinstance(entry, ModelSpec):
            return entry
        return cls(arch=entry) if isinstance(entry, str) else cls(**entry)


def parse_ratio(arch: str) -> tuple[int, int]:
    """'xlstm[7:1]' -> (7, 1): mLSTM blocks to sLSTM blocks."""
    match = _RATIO.match(arch.lower())
    if not match or match.group(1) == match.group(2) == "0":
        raise ValueError(f"expected an architecture 'xlstm[a:b]' (a:b = mLSTM:sLSTM, not both 0), "
                         f"'transformer' or 'lstm', got {arch!r}")
    return int(match.group(1)), int(match.group(2))


def slstm_positions(num_blocks: int, mlstm: int, slstm: int) -> list[int]:
    """Spread sLSTM blocks evenly so that a fraction slstm / (mlstm + slstm) of the blocks are sLSTM; each sLSTM
    block closes its group (xlstm[1:1] with 2 blocks -> [mLSTM, sLSTM])."""
    share = slstm / (mlstm + slstm)
    return [i for i in range(num_blocks) if int((i + 1) * share) > int(i * share)]


def build_model(arch: str, vocab_size: int, embedding_dim: int, num_blocks: int, num_heads: int,
                stack: dict[str, Any] | None = None, logit_soft_cap: float | None = None,
                reference: str = "xlstm[1:0]") -> nn.Module:
    """A language model `model(tokens) -> logits` of the named architecture.

    `stack` overrides xLSTMBlockStackConfig fields (e.g. mlstm_variant="sig", mlstm_block="post_up"); it applies to
    xLSTM models and to the reference that baselines are matched to. Transformer: same width, depth and heads, its
    SwiGLU width chosen to match the reference's parameter count. LSTM: num_blocks layers, hidden size matched.
    """
    arch = arch.lower()
    if arch not in BASELINES:
        mlstm, slstm = parse_ratio(arch)
        size = {"embedding_dim": embedding_dim, "num_blocks": num_blocks, "num_heads": num_heads}
        stack_cfg = xLSTMBlockStackConfig(**{**size, **(stack or {}),
                                             "slstm_at": slstm_positions(num_blocks, mlstm, slstm)})
        return xLSTMLM(xLSTMLMConfig(vocab_size=vocab_size, stack=stack_cfg, logit_soft_cap=logit_soft_cap))
    with torch.device("meta"):
        target = count_parameters(build_model(reference, vocab_size, embedding_dim, num_blocks, num_heads, stack,
                                              logit_soft_cap))
    if arch == "transformer":
        def make(ffn_dim: int) -> nn.Module:
            return TransformerLM(TransformerConfig(vocab_size, embedding_dim, num_blocks, num_heads, ffn_dim))
        sizes = range(4, 16 * embedding_dim + 1, 4)
    else:
        def make(hidden_dim: int) -> nn.Module:
            return LSTMLM(LSTMConfig(vocab_size, embedding_dim, hidden_dim, num_blocks))
        sizes = range(1, 4 * embedding_dim + 1)
    return match_parameters(make, target, sizes)[1]
