"""Distribution discrepancies between source and target feature batches, and gradient reversal."""
from __future__ import annotations

import torch


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def grad_reverse(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, negated gradient backward (the adversarial feature update of DANN)."""
    return _GradientReversal.apply(x)


def gaussian_kernels(a: torch.Tensor, b: torch.Tensor, bandwidth: torch.Tensor,
                     multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Sum of Gaussian kernels exp(-||a_i - b_j||^2 / (m * bandwidth)) over the multipliers m."""
    sq = torch.cdist(a, b).pow(2)
    return sum(torch.exp(-sq / (m * bandwidth)) for m in multipliers)


def _bandwidth(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Mean pairwise squared distance of the pooled batch (detached), the usual multi-kernel MMD scale."""
    pooled = torch.cat([fs, ft]).detach()
    return torch.cdist(pooled, pooled).pow(2).mean().clamp_min(1e-6)


def mmd(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Biased multi-kernel (Gaussian) MMD^2 between two batches (DDC / DAN)."""
    bw = _bandwidth(fs, ft)
    return (gaussian_kernels(fs, fs, bw).mean() + gaussian_kernels(ft, ft, bw).mean()
            - 2 * gaussian_kernels(fs, ft, bw).mean())


def lmmd(fs: torch.Tensor, ft: torch.Tensor, ys_onehot: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
    """Local (class-conditional) MMD of DSAN: source classes from labels, target classes from probabilities ``pt``.

    Only classes present in the source batch count; the result is averaged over them.
    """
    present = ys_onehot.sum(0) > 0
    ws = ys_onehot[:, present] / ys_onehot[:, present].sum(0, keepdim=True)
    wt = pt[:, present] / pt[:, present].sum(0, keepdim=True).clamp_min(1e-8)
    bw = _bandwidth(fs, ft)
    total = ((gaussian_kernels(fs, fs, bw) * (ws @ ws.T)).sum() + (gaussian_kernels(ft, ft, bw) * (wt @ wt.T)).sum()
             - 2 * (gaussian_kernels(fs, ft, bw) * (ws @ wt.T)).sum())
    return total / present.sum().clamp_min(1)


def coral(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: squared Frobenius distance of the feature covariances / (4 d^2)."""
    d = fs.shape[1]
    return (torch.cov(fs.T) - torch.cov(ft.T)).pow(2).sum() / (4 * d * d)


def cmd(fs: torch.Tensor, ft: torch.Tensor, moments: int = 5) -> torch.Tensor:
    """Central moment discrepancy (Zellinger et al., 2017) up to order ``moments`` on features scaled to (0, 1)."""
    fs, ft = torch.sigmoid(fs), torch.sigmoid(ft)
    ms, mt = fs.mean(0), ft.mean(0)
    total = (ms - mt).norm()
    cs, ct = fs - ms, ft - mt
    for k in range(2, moments + 1):
        total = total + (cs.pow(k).mean(0) - ct.pow(k).mean(0)).norm()
    return total


def higher_order_moments(f: torch.Tensor, selectors: torch.Tensor) -> torch.Tensor:
    """Sampled entries of the mean order-p tensor power of f: mean_i prod_j (f_i @ selectors[j]).

    ``selectors``: (p, d, terms) one-hot columns picking the feature of each factor; matmuls instead of gathers keep
    the backward pass fast on CPU.
    """
    return torch.einsum("bd,pdt->pbt", f, selectors).prod(dim=0).mean(0)


def homm(fs: torch.Tensor, ft: torch.Tensor, selectors: torch.Tensor) -> torch.Tensor:
    """HoMM (Chen et al., 2020): mean squared difference of sampled higher-order moment tensor entries."""
    return (higher_order_moments(fs, selectors) - higher_order_moments(ft, selectors)).pow(2).mean()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax predictions."""
    logp = torch.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(1).mean()
