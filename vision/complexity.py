"""Parameter and FLOP counts of a timm model (ViL or any other) for one image."""
from __future__ import annotations

from typing import Any

import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vision  # noqa: F401  (registers the ViL models with timm)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: torch.nn.Module, img_size: int, in_chans: int = 3) -> int:
    """FLOPs (2 per multiply-add) of one forward pass on one img_size x img_size image, counted by PyTorch's
    FlopCounterMode (matmuls, convolutions, attention); elementwise work is not counted, as is the convention.
    Attention runs through PyTorch's math SDPA here: the counter has no formula for the fused CPU kernel and would
    leave a Transformer's attention out."""
    model.eval()
    x = torch.zeros(1, in_chans, img_size, img_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(x)
    return counter.get_total_flops()


def default_img_size(name: str) -> int:
    """The input resolution timm's pretrained config of `name` names (224 for the *_224 models)."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or cfg.input_size is None:
        raise ValueError(f"timm has no default input size for {name!r}: pass an image size")
    return int(cfg.input_size[-1])


def describe(name: str, img_size: int | None = None, num_classes: int = 1000, **kwargs: Any) -> dict[str, Any]:
    """Build `name` with timm and report its parameters and GFLOPs at img_size (default: the model's own).

    ViL is counted with its block-diagonal q/k/v as blocks (dense_qkv=False): the architecture's own FLOPs, not
    those of the dense-GEMM execution path."""
    img_size = default_img_size(name) if img_size is None else img_size
    if name.startswith("vil_"):
        kwargs.setdefault("dense_qkv", False)
    model = timm.create_model(name, num_classes=num_classes, img_size=img_size, **kwargs)
    return {"model": name, "img_size": img_size, "params": count_params(model),
            "gflops": count_flops(model, img_size) / 1e9}
