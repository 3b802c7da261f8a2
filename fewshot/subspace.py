"""SubGD: a low-rank preconditioner fitted to fine-tuning updates, and the optimizer that applies it.

The preconditioner is ``P = V diag(w) Vᵀ`` where the columns of ``V`` are eigenvectors of the uncentred
auto-correlation ``(1/N) Σ δ_i δ_iᵀ`` of N update vectors and ``w = λ / Σλ`` (or ones when unweighted).
It is obtained from a thin or randomised SVD of the stacked ``(N, p)`` updates, so the ``p × p`` matrix is
never formed and memory stays ``O(p·k)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

_BASES = ("eigen", "random")


@dataclass
class Subspace:
    """An orthonormal basis ``basis (p, k)`` with per-direction ``scale (k,)`` and the eigenvalues it came from."""

    basis: torch.Tensor
    scale: torch.Tensor
    eigenvalues: torch.Tensor

    @property
    def dim(self) -> int:
        return self.basis.shape[1]

    @property
    def num_params(self) -> int:
        return self.basis.shape[0]

    def precondition(self, grad: torch.Tensor) -> torch.Tensor:
        """Apply ``P`` to the last dimension of ``grad`` (shape ``(..., p)``)."""
        return ((grad @ self.basis) * self.scale) @ self.basis.T

    def matrix(self) -> torch.Tensor:
        """The explicit ``p × p`` preconditioner; for tests and small models only."""
        return (self.basis * self.scale) @ self.basis.T

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"basis": self.basis, "scale": self.scale, "eigenvalues": self.eigenvalues}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> "Subspace":
        return cls(basis=d["basis"], scale=d["scale"], eigenvalues=d["eigenvalues"])


def _check_updates(updates: torch.Tensor) -> torch.Tensor:
    if not isinstance(updates, torch.Tensor):
        raise ValueError(f"updates must be a torch.Tensor of shape (N, p), got {type(updates).__name__}")
    if updates.dim() != 2:
        raise ValueError(f"updates must have shape (N, p), got shape {tuple(updates.shape)}")
    if updates.shape[0] == 0 or updates.shape[1] == 0:
        raise ValueError(f"updates must hold at least one non-empty update vector, got shape {tuple(updates.shape)}")
    if not torch.isfinite(updates).all():
        raise ValueError("updates contain NaN or inf")
    return updates.detach().to(torch.float32)


def fit_subspace(
    updates: torch.Tensor,
    k: int | None = None,
    weighted: bool = True,
    basis: str = "eigen",
    seed: int = 0,
    rtol: float = 1e-6,
) -> Subspace:
    """Fit the SubGD subspace to ``updates (N, p)``.

    ``k=None`` keeps every direction with a non-negligible eigenvalue (relative to the largest, ``rtol``);
    an integer keeps the top ``k``. ``weighted`` scales each direction by ``λ_j / Σλ`` (else 1).
    ``basis="random"`` is the ablation: a random orthonormal basis of the same size with the same scales.
    """
    u = _check_updates(updates)
    n, p = u.shape
    if k is not None and not (isinstance(k, int) and 1 <= k <= min(n, p)):
        raise ValueError(f"k must be None or an int in [1, min(N, p)] = [1, {min(n, p)}], got {k!r}")
    if basis not in _BASES:
        raise ValueError(f"basis must be one of {_BASES}, got {basis!r}")
    # A randomised SVD pays off only when far fewer directions than updates are kept.
    if k is not None and 4 * (k + 10) < min(n, p):
        _, s, v = torch.svd_lowrank(u, q=k + 10, niter=4)
    else:
        _, s, vh = torch.linalg.svd(u, full_matrices=False)
        v = vh.T
    eig = s.square() / n
    if eig[0] <= 0:
        raise ValueError("updates are all zero; there is no subspace to fit")
    keep = int((eig > rtol * eig[0]).sum()) if k is None else k
    eig, v = eig[:keep], v[:, :keep]
    if basis == "random":
        g = torch.Generator().manual_seed(seed)
        v, _ = torch.linalg.qr(torch.randn(p, keep, generator=g))
    scale = eig / eig.sum() if weighted else torch.ones_like(eig)
    return Subspace(basis=v.contiguous(), scale=scale, eigenvalues=eig)


class SubspaceOptimizer(torch.optim.Optimizer):
    """Gradient descent preconditioned by the SubGD subspace: ``θ ← θ − lr · P ∇L``.

    Parameters are flattened across tensors in ``params`` order (all groups, in order), so ``updates`` must
    have ``p = Σ numel`` columns laid out the same way (e.g. ``torch.nn.utils.parameters_to_vector``).
    ``updates`` may also be an already fitted :class:`Subspace`. The subspace lives in the optimizer state,
    so ``state_dict``/``load_state_dict`` carry it.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        updates: torch.Tensor | Subspace,
        lr: float,
        k: int | None = None,
        weighted: bool = True,
        basis: str = "eigen",
        seed: int = 0,
    ):
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        super().__init__(params, dict(lr=lr))
        num_params = sum(p.numel() for g in self.param_groups for p in g["params"])
        sub = updates if isinstance(updates, Subspace) else fit_subspace(updates, k, weighted, basis, seed)
        if sub.num_params != num_params:
            raise ValueError(
                f"updates have {sub.num_params} columns but the parameters have {num_params} elements in total"
            )
        first = self.param_groups[0]["params"][0]
        sub = Subspace(*(t.to(device=first.device, dtype=first.dtype) for t in (sub.basis, sub.scale, sub.eigenvalues)))
        self.state["subspace"] = sub.to_dict()

    @property
    def subspace(self) -> Subspace:
        return Subspace.from_dict(self.state["subspace"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"]]
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        direction = self.subspace.precondition(grad)
        offset = 0
        for group in self.param_groups:
            for p in group["params"]:
                n = p.numel()
                p.add_(direction[offset : offset + n].view_as(p), alpha=-group["lr"])
                offset += n
        return loss
