"""Vision-LSTM (ViL, second version): patch embedding + learned position embedding, alternating-direction mLSTM
blocks on the row-major patch sequence, bilateral (first + last token) pooling, linear head. Registered with timm."""
from __future__ import annotations

import math
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from vision.patch_embed import PatchGemmEmbed
from xlstm_core import xLSTMBlockStack, xLSTMBlockStackConfig
from xlstm_core.mlstm_layer import small_init_, wang_init_

POOLS = ("bilateral", "avg")


class VisionLSTM(nn.Module):
    """ViL backbone + classifier. `depth` counts mLSTM blocks (24 for T/S/B); odd blocks read the flipped sequence.

    conv_mode="grid2d" (kernel 3) is ViL v2's 3x3 conv on the token grid; "causal1d" (kernel 4) is ViL v1's.
    The mLSTM cell runs through `kernels.mlstm` (`backend="auto"` takes Triton on CUDA). With mlstm_form="auto" (the
    default) sequences of up to 256 patches (224^2 at patch 16) take the parallel form where it is fused: the Triton
    kernel that keeps each head's (S, S) tiles on chip (eager and compiled), or inductor's fusion of the PyTorch form
    under torch.compile; longer sequences take the chunkwise form, whose memory grows linearly with the patches.
    `dense_qkv` computes the 4x4 block-diagonal q/k/v projections and the gates as two dense GEMMs (gate weights
    folded in) instead of batched matmuls over tiny blocks and a concatenation; the parameters are the same.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "bilateral", embed_dim: int = 192, depth: int = 24,
                 num_heads: int = 4, proj_factor: float = 2.0, qkv_block_size: int = 4, conv_mode: str = "grid2d",
                 conv_kernel_size: int | None = None, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 head_norm: bool = True, dense_qkv: bool = True, backend: str = "auto", chunk_size: int = 64,
                 mlstm_form: str = "auto"):
        super().__init__()
        if global_pool not in POOLS:
            raise ValueError(f"global_pool must be one of {POOLS}, got {global_pool!r}")
        if depth < 1:
            raise ValueError(f"depth must be a positive number of blocks, got {depth}")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.grad_checkpointing = False
        self.patch_embed = PatchGemmEmbed(img_size, patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.stack = xLSTMBlockStack(xLSTMBlockStackConfig(
            embedding_dim=embed_dim, num_blocks=depth, num_heads=num_heads, reverse_at=list(range(1, depth, 2)),
            mlstm_block="pre_up", bias=True, cell_norm_bias=True, drop_path=drop_path_rate, final_norm=True,
            proj_factor=proj_factor, qkv_block_size=qkv_block_size, conv_mode=conv_mode,
            conv_kernel_size=conv_kernel_size or (3 if conv_mode == "grid2d" else 4), backend=backend,
            dense_qkv=dense_qkv, chunk_size=chunk_size, mlstm_form=mlstm_form))
        self.head_hidden_size = 2 * embed_dim if global_pool == "bilateral" else embed_dim
        # the published models normalise the pooled features once more before the head
        self.head_norm = nn.LayerNorm(self.head_hidden_size) if head_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"stack.blocks.{i}", num_chs=embed_dim, reduction=patch_size)
                             for i in range(depth)]
        self.init_weights()

    def init_weights(self) -> None:
        """The ViL paper's init: xavier patch embedding, truncated-normal position embedding, small-init up/q/k/v
        and Wang-init down projections scaled by the embedding dim, a near-zero head (mLSTM gates keep the core's
        forget-bias linspace(3, 6) and small-normal input bias)."""
        E = self.embed_dim
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for block in self.stack.blocks:
            layer = block.layer
            small_init_(layer.proj_up.weight, E)
            wang_init_(layer.proj_down.weight, E, 1)
            for proj in (layer.q, layer.k, layer.v):
                small_init_(proj.weight, E)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^pos_embed|patch_embed", blocks=r"^stack\.blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in POOLS:
                raise ValueError(f"global_pool must be one of {POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
            self.head_hidden_size = 2 * self.embed_dim if global_pool == "bilateral" else self.embed_dim
            if isinstance(self.head_norm, nn.LayerNorm):
                self.head_norm = nn.LayerNorm(self.head_hidden_size)
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patches + position embedding (resampled when the token grid differs from the trained one)."""
        x = self.patch_embed(x)
        B, H, W, E = x.shape
        pos = self.pos_embed
        if (H, W) != tuple(self.patch_embed.grid_size):
            pos = resample_abs_pos_embed(pos, [H, W], list(self.patch_embed.grid_size), num_prefix_tokens=0)
        return x.reshape(B, H * W, E) + pos, (H, W)

    def _block(self, index: int, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        block, flip = self.stack.blocks[index], self.stack.reversed[index]
        run = (lambda t: checkpoint(block, t, grid=grid, use_reentrant=False)) if self.grad_checkpointing else (
            lambda t: block(t, grid=grid))
        return run(x.flip(1)).flip(1) if flip else run(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, N, E) normed patch tokens (row-major)."""
        x, grid = self._embed(x)
        if not self.grad_checkpointing:
            return self.stack(x, grid=grid)
        for index in range(len(self.stack.blocks)):
            x = self._block(index, x, grid)
        return self.stack.final_norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Bilateral: concatenate the first and last token (the ends of the two reading directions)."""
        if self.global_pool == "bilateral":
            return torch.cat([x[:, 0], x[:, -1]], dim=-1)
        return x.mean(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.head_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Features after selected blocks (timm API): `indices` = last n blocks if int, those listed if a list.

        Returns the intermediates as (B, E, H, W) maps (NCHW) or (B, N, E) tokens (NLC), and unless
        `intermediates_only` also the final normed tokens. `norm` applies the final norm to each intermediate.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stack.blocks), indices)
        B = x.shape[0]
        x, (H, W) = self._embed(x)
        intermediates = []
        last = max_index if stop_early or intermediates_only else len(self.stack.blocks) - 1
        for index in range(last + 1):
            x = self._block(index, x, (H, W))
            if index in take:
                y = self.stack.final_norm(x) if norm else x
                intermediates.append(y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
                                     if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self.stack.final_norm(x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last wanted one (and optionally the final norm / head); timm API."""
        take, max_index = feature_take_indices(len(self.stack.blocks), indices)
        self.stack.blocks = self.stack.blocks[: max_index + 1]
        self.stack.reversed = self.stack.reversed[: max_index + 1]
        if prune_norm:
            self.stack.final_norm = nn.Identity()
        if prune_head:
            self.head_norm, self.head = nn.Identity(), nn.Identity()
        return take


# published (NX-AI vision-lstm, VisionLSTM2) key -> ours; their LayerNorm weights are stored as (weight - 1)
_PUBLISHED_BLOCK_KEYS = {
    "norm.weight": "norm.weight", "norm.bias": "norm.bias",
    "layer.proj_up.weight": "layer.proj_up.weight", "layer.proj_up.bias": "layer.proj_up.bias",
    "layer.q_proj.weight": "layer.q.weight", "layer.q_proj.bias": "layer.q.bias",
    "layer.k_proj.weight": "layer.k.weight", "layer.k_proj.bias": "layer.k.bias",
    "layer.v_proj.weight": "layer.v.weight", "layer.v_proj.bias": "layer.v.bias",
    "layer.conv.weight": "layer.conv.conv.weight", "layer.conv.bias": "layer.conv.conv.bias",
    "layer.conv.conv.weight": "layer.conv.weight", "layer.conv.conv.bias": "layer.conv.bias",
    "layer.mlstm_cell.igate.weight": "layer.igate.weight", "layer.mlstm_cell.igate.bias": "layer.igate.bias",
    "layer.mlstm_cell.fgate.weight": "layer.fgate.weight", "layer.mlstm_cell.fgate.bias": "layer.fgate.bias",
    "layer.mlstm_cell.outnorm.weight": "layer.norm.weight", "layer.mlstm_cell.outnorm.bias": "layer.norm_bias",
    "layer.learnable_skip": "layer.skip",
    "layer.proj_down.weight": "layer.proj_down.weight", "layer.proj_down.bias": "layer.proj_down.bias",
}
_PUBLISHED_TOP_KEYS = {
    "patch_embed.proj.weight": "patch_embed.proj.weight", "patch_embed.proj.bias": "patch_embed.proj.bias",
    "pos_embed.embed": "pos_embed", "norm.weight": "stack.final_norm.weight", "norm.bias": "stack.final_norm.bias",
    "legacy_norm.weight": "head_norm.weight", "legacy_norm.bias": "head_norm.bias",
    "head.weight": "head.weight", "head.bias": "head.bias",
}
_PUBLISHED_DIRECTIONS = {"rowwise_from_top_left": 0, "rowwise_from_bot_right": 1}
_RESIDUAL_NORMS = ("norm.weight", "layer.mlstm_cell.outnorm.weight")


def convert_published(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a published ViL-v2 state dict (blocks.<pair>.rowwise_from_{top_left,bot_right}.…) to our layout."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 3 and parts[2] in _PUBLISHED_DIRECTIONS:
            index = 2 * int(parts[1]) + _PUBLISHED_DIRECTIONS[parts[2]]
            rest = ".".join(parts[3:])
            if rest not in _PUBLISHED_BLOCK_KEYS:
                raise ValueError(f"unexpected key {key!r} in a published ViL checkpoint")
            target = _PUBLISHED_BLOCK_KEYS[rest]
            if rest in _RESIDUAL_NORMS:
                value = value + 1.0
            elif rest.startswith(("layer.q_proj.weight", "layer.k_proj.weight", "layer.v_proj.weight")):
                value = value.transpose(-1, -2)  # theirs maps (out, in) per head, ours (in, out)
            elif rest == "layer.conv.conv.weight":
                value = value.squeeze(1)  # causal 1-D conv: (D, 1, K) -> (D, K)
            out[f"stack.blocks.{index}.{target}"] = value
        elif key in _PUBLISHED_TOP_KEYS:
            if key == "pos_embed.embed":
                value = value.flatten(1, 2)
            elif key == "norm.weight":
                value = value + 1.0
            out[_PUBLISHED_TOP_KEYS[key]] = value
        else:
            raise ValueError(f"unexpected key {key!r} in a published ViL checkpoint")
    return out


def _is_published(state_dict: dict[str, torch.Tensor]) -> bool:
    return "pos_embed.embed" in state_dict or any(".rowwise_from_" in k for k in state_dict)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: VisionLSTM) -> dict[str, torch.Tensor]:
    """Unwrap training checkpoints, convert the published layout, resize the position embedding to `model`'s grid,
    and drop a classifier whose number of classes differs (timm's pretrained_filter_fn)."""
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if _is_published(state_dict):
        state_dict = convert_published(state_dict)
    pos = state_dict.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        side = math.isqrt(pos.shape[1])
        if side * side != pos.shape[1]:
            raise ValueError(f"cannot infer the grid of a non-square checkpoint pos_embed {tuple(pos.shape)}")
        state_dict["pos_embed"] = resample_abs_pos_embed(pos, list(model.patch_embed.grid_size), [side, side],
                                                         num_prefix_tokens=0)
    head = state_dict.get("head.weight")
    if head is not None and (not isinstance(model.head, nn.Linear) or head.shape != model.head.weight.shape):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    return state_dict


def load_checkpoint(model: VisionLSTM, path: str, strict: bool = True):
    """Load a local checkpoint (ours, a training checkpoint of ours, or the published ViL-v2 layout) into `model`.

    With a different class count the head is skipped (so `strict` applies to the backbone only)."""
    state_dict = checkpoint_filter_fn(torch.load(path, map_location="cpu", weights_only=True), model)
    head_dropped = "head.weight" not in state_dict and isinstance(model.head, nn.Linear)
    result = model.load_state_dict(state_dict, strict=strict and not head_dropped)
    if strict and head_dropped:
        missing = [k for k in result.missing_keys if not k.startswith("head.")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint mismatch: missing {missing}, unexpected {result.unexpected_keys}")
    return result


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875,
            "interpolation": "bicubic", "fixed_input_size": False, "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj", "classifier": "head",
            "license": "apache-2.0", "paper_ids": "arXiv:2406.04303", **kwargs}


default_cfgs = generate_default_cfgs({
    "vil_tiny_patch16_224": _cfg(),
    "vil_small_patch16_224": _cfg(),
    "vil_base_patch16_224": _cfg(),
})


def _create_vil(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionLSTM:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(VisionLSTM, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


# ViL-T/S/B: dims 192/384/768, 24 blocks, 4 heads; one drop-path rate for all blocks (0 / 0.05 / 0.2)
SIZES = {"tiny": dict(embed_dim=192, drop_path_rate=0.0), "small": dict(embed_dim=384, drop_path_rate=0.05),
         "base": dict(embed_dim=768, drop_path_rate=0.2)}


@register_model
def vil_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionLSTM:
    """ViL-T (6.4M parameters with a 1000-class head at 192^2 input)."""
    return _create_vil("vil_tiny_patch16_224", pretrained, **{**SIZES["tiny"], **kwargs})


@register_model
def vil_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionLSTM:
    """ViL-S (23.4M parameters)."""
    return _create_vil("vil_small_patch16_224", pretrained, **{**SIZES["small"], **kwargs})


@register_model
def vil_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionLSTM:
    """ViL-B (89.2M parameters)."""
    return _create_vil("vil_base_patch16_224", pretrained, **{**SIZES["base"], **kwargs})
