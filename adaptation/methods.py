"""Domain adaptation losses L_DA: each method is an nn.Module mapping a source/target batch to a scalar.

A method may own parameters (a domain discriminator, a kernel network); they are optimised together with the
model under CE_source + lambda * L_DA. Adversaries see features through a gradient-reversal layer, so one
minimisation step trains both players.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .losses import cmd, coral, entropy, grad_reverse, homm, lmmd, mmd


@dataclass
class DABatch:
    """One step's data: the model, raw source/target inputs, source labels, features and logits of both."""

    model: nn.Module
    x_source: torch.Tensor
    y_source: torch.Tensor
    x_target: torch.Tensor
    feats_source: torch.Tensor
    logits_source: torch.Tensor
    feats_target: torch.Tensor
    logits_target: torch.Tensor


class DAMethod(nn.Module):
    """Base class; subclasses implement ``forward(batch) -> L_DA``."""

    def __init__(self, feat_dim: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.feat_dim, self.num_classes = feat_dim, num_classes

    def forward(self, batch: DABatch) -> torch.Tensor:
        raise NotImplementedError


def _mlp(in_dim: int, hidden: int, layers: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = hidden
    return nn.Sequential(*mods, nn.Linear(in_dim, out_dim))


def _domain_bce(disc_s: torch.Tensor, disc_t: torch.Tensor) -> torch.Tensor:
    """Discriminator loss with source = 0, target = 1."""
    return 0.5 * (F.binary_cross_entropy_with_logits(disc_s, torch.zeros_like(disc_s))
                  + F.binary_cross_entropy_with_logits(disc_t, torch.ones_like(disc_t)))


class DANN(DAMethod):
    """Domain-adversarial training (Ganin et al., 2016): a discriminator on gradient-reversed features."""

    def __init__(self, feat_dim, num_classes, seed=0, hidden: int = 64, layers: int = 1, dropout: float = 0.0):
        super().__init__(feat_dim, num_classes, seed)
        self.discriminator = _mlp(self._disc_in(), hidden, layers, 1, dropout)

    def _disc_in(self) -> int:
        return self.feat_dim

    def _disc_input(self, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return feats

    def forward(self, batch):
        ds = self.discriminator(grad_reverse(self._disc_input(batch.feats_source, batch.logits_source)))
        dt = self.discriminator(grad_reverse(self._disc_input(batch.feats_target, batch.logits_target)))
        return _domain_bce(ds, dt)


class CDAN(DANN):
    """Conditional adversarial DA (Long et al., 2018): the discriminator sees features (x) class probabilities."""

    def _disc_in(self):
        return self.feat_dim * self.num_classes

    def _disc_input(self, feats, logits):
        probs = torch.softmax(logits, dim=1).detach()
        return torch.bmm(probs.unsqueeze(2), feats.unsqueeze(1)).flatten(1)


def CoDATS(feat_dim: int, num_classes: int, seed: int = 0) -> DANN:
    """CoDATS (Wilson et al., 2020), single-source: DANN with the deeper, dropout-regularised discriminator of the
    paper (meant for the 1-D CNN backbone)."""
    return DANN(feat_dim, num_classes, seed, hidden=128, layers=2, dropout=0.3)


class _Discrepancy(DAMethod):
    """L_DA = a discrepancy between the source and target feature batches."""

    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def forward(self, batch):
        return self.distance(batch.feats_source, batch.feats_target)


class CORAL(_Discrepancy):
    """Deep CORAL (Sun & Saenko, 2016)."""

    distance = staticmethod(coral)


class MMD(_Discrepancy):
    """DDC / DAN: multi-kernel Gaussian MMD (Tzeng et al., 2014; Long et al., 2015)."""

    distance = staticmethod(mmd)


class CMD(_Discrepancy):
    """Central moment discrepancy (Zellinger et al., 2017)."""

    distance = staticmethod(cmd)


class HoMM(DAMethod):
    """Higher-order moment matching (Chen et al., 2020), order 3 on ``num_terms`` sampled tensor entries."""

    def __init__(self, feat_dim, num_classes, seed=0, order: int = 3, num_terms: int = 1024):
        super().__init__(feat_dim, num_classes, seed)
        gen = torch.Generator().manual_seed(seed)
        index = torch.randint(0, feat_dim, (order, num_terms), generator=gen)
        self.register_buffer("selectors", F.one_hot(index, feat_dim).transpose(1, 2).float())

    def forward(self, batch):
        return homm(batch.feats_source, batch.feats_target, self.selectors)


class DSAN(DAMethod):
    """Deep subdomain adaptation (Zhu et al., 2020): class-conditional local MMD with target soft labels."""

    def forward(self, batch):
        ys = F.one_hot(batch.y_source, self.num_classes).float()
        pt = torch.softmax(batch.logits_target, dim=1).detach()
        return lmmd(batch.feats_source, batch.feats_target, ys, pt)


class MMDA(DAMethod):
    """MMDA (Rahman et al., 2020): MMD + CORAL + conditional entropy of the target predictions."""

    def forward(self, batch):
        fs, ft = batch.feats_source, batch.feats_target
        return mmd(fs, ft) + coral(fs, ft) + entropy(batch.logits_target)


class DIRTT(DANN):
    """DIRT-T's first stage, VADA (Shu et al., 2018): adversarial alignment + target conditional entropy + virtual
    adversarial training on target inputs. The teacher-refinement stage of DIRT-T is not run."""

    def __init__(self, feat_dim, num_classes, seed=0, vat_radius: float = 1.0, vat_xi: float = 1e-6):
        super().__init__(feat_dim, num_classes, seed)
        self.vat_radius, self.vat_xi = vat_radius, vat_xi

    def _vat(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """KL between predictions at x and at x + r_adv (one power iteration for the adversarial direction)."""
        p = torch.softmax(logits, dim=1).detach()
        d = torch.randn_like(x)
        d = self.vat_xi * d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1)).clamp_min(1e-12)
        d.requires_grad_(True)
        kl = F.kl_div(torch.log_softmax(model(x + d)[1], dim=1), p, reduction="batchmean")
        grad = torch.autograd.grad(kl, d)[0]
        r_adv = self.vat_radius * grad / grad.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1)).clamp_min(1e-12)
        return F.kl_div(torch.log_softmax(model(x + r_adv.detach())[1], dim=1), p, reduction="batchmean")

    def forward(self, batch):
        return (super().forward(batch) + entropy(batch.logits_target)
                + self._vat(batch.model, batch.x_target, batch.logits_target))


class AdvSKM(DAMethod):
    """Adversarial spectral kernel matching (Liu & Xue, 2021): an MMD on a learned hybrid spectral embedding
    (cosine + sigmoid units) that the embedding maximises and the features minimise."""

    def __init__(self, feat_dim, num_classes, seed=0, width: int = 64):
        super().__init__(feat_dim, num_classes, seed)
        self.cos_map = nn.Linear(feat_dim, width)
        self.sig_map = nn.Linear(feat_dim, width)
        for p in self.parameters():
            p.register_hook(torch.neg)

    def _embed(self, f: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.cos(self.cos_map(f)), torch.sigmoid(self.sig_map(f))], dim=1)

    def forward(self, batch):
        return mmd(self._embed(batch.feats_source), self._embed(batch.feats_target))


DA_METHODS: dict[str, Callable[..., DAMethod]] = {
    "DANN": DANN, "CORAL": CORAL, "MMD": MMD, "CMD": CMD, "HoMM": HoMM, "DSAN": DSAN,
    "CDAN": CDAN, "DIRTT": DIRTT, "AdvSKM": AdvSKM, "MMDA": MMDA, "CoDATS": CoDATS,
}


def make_method(name: str, feat_dim: int, num_classes: int, seed: int = 0) -> DAMethod:
    """DA method by name (``DA_METHODS`` keys)."""
    if name not in DA_METHODS:
        raise ValueError(f"DA method: expected one of {sorted(DA_METHODS)}, got {name!r}")
    return DA_METHODS[name](feat_dim, num_classes, seed)
