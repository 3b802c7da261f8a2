"""Nonlinear RLC circuit tasks (Forgione & Piga's benchmark, as used by SubGD), simulated with SciPy.

dv_C/dt = i_L / C,  di_L/dt = (−v_C − R i_L + v_in) / L(i_L),
L(i) = L · [0.9 · (arctan(−5(|i| − 5)) / π + 0.5) + 0.1]   (saturating inductor; constant L if linear).
Each task is one (R, L, C); samples are windows of the normalised input and state trajectories.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.signal import butter, sosfiltfilt

from .base import Task, task_rng

# Fixed normalisation so every task shares one scale (volts, amperes).
V_SCALE = 100.0
I_SCALE = 10.0


def inductance(i: np.ndarray, L: np.ndarray | float, nonlinear: bool = True) -> np.ndarray:
    """Current-dependent inductance L(i); ``nonlinear=False`` gives the constant-L (linear) circuit."""
    if not nonlinear:
        return np.broadcast_to(L, np.shape(i)) * 1.0
    return L * (0.9 * (np.arctan(-5.0 * (np.abs(i) - 5.0)) / np.pi + 0.5) + 0.1)


def simulate_rlc(
    v_in: np.ndarray,
    dt: float,
    R: np.ndarray | float,
    L: np.ndarray | float,
    C: np.ndarray | float,
    nonlinear: bool = True,
    rtol: float = 1e-5,
) -> np.ndarray:
    """Simulate B circuits at once from rest. ``v_in (B, T)`` sampled every ``dt`` seconds (linearly
    interpolated in between); R, L, C scalars or ``(B,)``. Returns states ``(B, T, 2)`` = (v_C, i_L)."""
    v_in = np.atleast_2d(np.asarray(v_in, dtype=np.float64))
    b, t_len = v_in.shape
    R, L, C = (np.broadcast_to(np.asarray(a, dtype=np.float64), (b,)) for a in (R, L, C))
    if min(R.min(), L.min(), C.min()) <= 0 or dt <= 0:
        raise ValueError("R, L, C and dt must be positive")
    t_grid = np.arange(t_len) * dt

    def rhs(t: float, s: np.ndarray) -> np.ndarray:
        v_c, i_l = s[:b], s[b:]
        j = min(int(t / dt), t_len - 2)
        u = v_in[:, j] + (t / dt - j) * (v_in[:, j + 1] - v_in[:, j])
        return np.concatenate([i_l / C, (-v_c - R * i_l + u) / inductance(i_l, L, nonlinear)])

    sol = solve_ivp(rhs, (0.0, t_grid[-1]), np.zeros(2 * b), t_eval=t_grid, rtol=rtol, atol=rtol * 0.1)
    if not sol.success:
        raise RuntimeError(f"RLC simulation failed: {sol.message}")
    return np.stack([sol.y[:b], sol.y[b:]], axis=-1)


def filtered_white_noise(rng: np.random.Generator, n: int, dt: float, cutoff_hz: float, std: float) -> np.ndarray:
    """Gaussian white noise low-pass filtered (4th-order Butterworth, zero phase) and scaled to ``std``."""
    sos = butter(4, cutoff_hz, fs=1.0 / dt, output="sos")
    u = sosfiltfilt(sos, rng.standard_normal(n + 200))[100:-100]
    return u * (std / u.std())


def windows(v_in: np.ndarray, states: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut one trajectory into non-overlapping windows.

    x: ``(n, length, 3)`` = [v_in, v_C(0), i_L(0)] with the initial state only at step 0 (zeros after);
    y: ``(n, length, 2)`` = the normalised states. All normalised by ``V_SCALE``/``I_SCALE``.
    """
    n = len(v_in) // length
    u = (v_in[: n * length] / V_SCALE).reshape(n, length, 1)
    s = (states[: n * length] / np.array([V_SCALE, I_SCALE])).reshape(n, length, 2)
    x0 = np.zeros_like(s)
    x0[:, 0] = s[:, 0]
    x = np.concatenate([u, x0], axis=-1)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(s, dtype=torch.float32)


@dataclass
class RLCFamily:
    """Tasks R ~ U[R_range] Ω, L ~ U[L_range] H, C ~ U[C_range] F; filtered white-noise input."""

    seed: int = 0
    R_range: tuple[float, float] = (1.0, 14.0)
    L_range: tuple[float, float] = (20e-6, 140e-6)
    C_range: tuple[float, float] = (100e-9, 800e-9)
    nominal: tuple[float, float, float] = (3.0, 50e-6, 270e-9)
    dt: float = 0.5e-6
    window: int = 64
    train_windows: int = 100
    test_windows: int = 20
    cutoff_hz: float = 150e3
    v_std: float = 80.0
    nonlinear: bool = True
    rtol: float = 1e-5
    name: str = "rlc"

    def __post_init__(self):
        if self.window < 2 or self.train_windows < 1 or self.test_windows < 1:
            raise ValueError("window must be >= 2 and train_windows, test_windows >= 1")

    def _make(self, rngs: list[np.random.Generator], rlc: np.ndarray) -> list[Task]:
        # All tasks are integrated in one solve_ivp call: the solver's cost barely grows with the batch.
        pools = []
        for n_win in (self.train_windows, self.test_windows):
            u = np.stack([filtered_white_noise(r, n_win * self.window, self.dt, self.cutoff_hz, self.v_std) for r in rngs])
            states = simulate_rlc(u, self.dt, *rlc.T, nonlinear=self.nonlinear, rtol=self.rtol)
            pools.append([windows(ui, si, self.window) for ui, si in zip(u, states)])
        return [
            Task(*tr, *te, params=dict(zip(("R", "L", "C"), map(float, p))))
            for tr, te, p in zip(pools[0], pools[1], rlc)
        ]

    def tasks(self, split: str, indices: list[int]) -> list[Task]:
        rngs = [task_rng(self.seed, split, i) for i in indices]
        rlc = np.array([[r.uniform(*rg) for rg in (self.R_range, self.L_range, self.C_range)] for r in rngs])
        return self._make(rngs, rlc)

    def task(self, split: str, index: int) -> Task:
        return self.tasks(split, [index])[0]

    def nominal_task(self) -> Task:
        return self._make([task_rng(self.seed, "nominal", 0)], np.array([self.nominal]))[0]
