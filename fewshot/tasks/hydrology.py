"""Rainfall–runoff tasks: a stochastic daily weather generator driving an HBV-type conceptual model.

Each task is one synthetic basin (its own climate and HBV parameters). Samples are ``seq_len``-day windows of
forcings (CAMELS/Daymet variables prcp, srad, tmax, tmin, vp) labelled with the discharge of the window's
last day, the layout real CAMELS basins get in :mod:`fewshot.tasks.camels`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Task, task_rng

FORCINGS = ("prcp", "srad", "tmax", "tmin", "vp")
# Fixed affine normalisation shared by synthetic and CAMELS basins: (offset, scale) per forcing, then discharge.
FORCING_NORM = np.array([[2.5, 6.0], [200.0, 90.0], [12.0, 11.0], [2.0, 10.0], [900.0, 600.0]])
DISCHARGE_NORM = (1.0, 2.0)

HBV_RANGES = {
    "TT": (-2.0, 2.0), "CFMAX": (1.0, 6.0), "FC": (50.0, 500.0), "LP": (0.3, 1.0), "BETA": (1.0, 6.0),
    "K0": (0.05, 0.5), "K1": (0.01, 0.3), "K2": (0.001, 0.1), "UZL": (0.0, 70.0), "PERC": (0.0, 6.0),
    "MAXBAS": (1.0, 5.0),
}
CLIMATE_RANGES = {
    "t_mean": (-2.0, 14.0), "t_amp": (5.0, 15.0), "p_dry_wet": (0.15, 0.45), "p_wet_wet": (0.4, 0.75),
    "p_intensity": (3.0, 12.0), "rad_mean": (130.0, 220.0),
}


def saturation_vapour_pressure(t_c: np.ndarray) -> np.ndarray:
    """Tetens' formula, Pa."""
    return 611.0 * np.exp(17.27 * t_c / (t_c + 237.3))


def generate_weather(rng: np.random.Generator, climate: dict[str, float], days: int) -> np.ndarray:
    """Daily forcings ``(days, 5)`` in :data:`FORCINGS` order.

    Precipitation occurrence is a two-state Markov chain with seasonal modulation and gamma-distributed amounts;
    temperature is a seasonal cycle plus AR(1) anomalies (cooler, smaller diurnal range on wet days); radiation
    follows the season and drops on wet days; vapour pressure is saturated at the daily minimum temperature.
    """
    doy = np.arange(days) % 365
    season = np.cos(2 * np.pi * (doy - 200) / 365)  # +1 in mid July
    wet = np.zeros(days, dtype=bool)
    anomaly = np.zeros(days)
    u = rng.random(days)
    noise = rng.normal(0.0, 2.5, days)
    for d in range(1, days):
        p = climate["p_wet_wet"] if wet[d - 1] else climate["p_dry_wet"]
        wet[d] = u[d] < p * (1.0 - 0.2 * season[d])
        anomaly[d] = 0.7 * anomaly[d - 1] + noise[d]
    amount = rng.gamma(0.7, climate["p_intensity"] / 0.7, days)
    prcp = np.where(wet, amount, 0.0)
    t_avg = climate["t_mean"] + climate["t_amp"] * season + anomaly - 1.0 * wet
    dtr = 11.0 - 5.0 * wet + rng.normal(0.0, 1.0, days)
    tmax, tmin = t_avg + dtr / 2, t_avg - dtr / 2
    srad = climate["rad_mean"] * (1.0 + 0.6 * season) * np.where(wet, 0.55, 1.0) * rng.uniform(0.85, 1.15, days)
    vp = saturation_vapour_pressure(tmin)
    return np.stack([prcp, srad, tmax, tmin, vp], axis=1)


def potential_evaporation(forcings: np.ndarray) -> np.ndarray:
    """Hargreaves-type radiation formula, mm/day: 0.0135 (T + 17.8) · Rs (Rs as mm/day of evaporation)."""
    srad, t_avg = forcings[:, 1], forcings[:, 2:4].mean(axis=1)
    return np.maximum(0.0135 * (t_avg + 17.8) * srad * 86400 / 2.45e6, 0.0)


def hbv(forcings: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """Simulate an HBV-type model (snow, soil moisture, two-box response, triangular routing) from empty
    stores except a half-full soil; returns discharge (mm/day) for every day of ``forcings (days, 5)``."""
    prcp, t_avg, pet = forcings[:, 0], forcings[:, 2:4].mean(axis=1), potential_evaporation(forcings)
    snow, sm, suz, slz = 0.0, 0.5 * params["FC"], 0.0, 0.0
    q = np.empty(len(prcp))
    for d in range(len(prcp)):
        frozen = t_avg[d] < params["TT"]
        snow += prcp[d] if frozen else 0.0
        melt = 0.0 if frozen else min(snow, params["CFMAX"] * (t_avg[d] - params["TT"]))
        snow -= melt
        inflow = melt + (0.0 if frozen else prcp[d])
        recharge = inflow * (sm / params["FC"]) ** params["BETA"]
        sm = min(sm + inflow - recharge, params["FC"])
        et = min(sm, pet[d] * min(sm / (params["LP"] * params["FC"]), 1.0))
        sm -= et
        suz += recharge
        perc = min(params["PERC"], suz)
        suz -= perc
        slz += perc
        q0 = params["K0"] * max(suz - params["UZL"], 0.0)
        q1 = params["K1"] * suz
        q2 = params["K2"] * slz
        suz -= q0 + q1
        slz -= q2
        q[d] = q0 + q1 + q2
    return route(q, params["MAXBAS"])


def route(q: np.ndarray, maxbas: float) -> np.ndarray:
    """Convolve with HBV's triangular unit hydrograph of base ``maxbas`` days (weights sum to one)."""
    n = int(np.ceil(maxbas))
    edges = np.linspace(0.0, maxbas, 201)
    tri = np.interp(edges, [0.0, maxbas / 2, maxbas], [0.0, 1.0, 0.0])
    w = np.array([tri[(edges >= i) & (edges <= i + 1)].sum() for i in range(n)])
    w /= w.sum()
    return np.convolve(q, w)[: len(q)]


def normalise_forcings(forcings: np.ndarray) -> np.ndarray:
    return (forcings - FORCING_NORM[:, 0]) / FORCING_NORM[:, 1]


def basin_samples(forcings: np.ndarray, discharge: np.ndarray, seq_len: int, days: np.ndarray):
    """Windows ending at each of ``days``: ``x (n, seq_len, 5)`` normalised forcings (views, no copy),
    ``y (n, 1)`` normalised discharge of the last day."""
    if days.min() < seq_len - 1 or days.max() >= len(forcings):
        raise ValueError(f"every target day needs {seq_len - 1} days of history inside the record")
    f = torch.tensor(normalise_forcings(forcings), dtype=torch.float32)
    win = f.unfold(0, seq_len, 1).transpose(1, 2)  # (T - seq_len + 1, seq_len, 5), window i ends at day i+seq_len-1
    idx = torch.as_tensor(days - (seq_len - 1))
    y = (torch.tensor(discharge, dtype=torch.float32)[torch.as_tensor(days)] - DISCHARGE_NORM[0]) / DISCHARGE_NORM[1]
    return win[idx], y[:, None]


@dataclass
class HydrologyFamily:
    """Synthetic basins: ``warmup_years`` (spin-up and history only), ``train_years`` (support pool) and
    ``test_years`` (query pool, ``query_days`` days drawn per basin)."""

    seed: int = 0
    seq_len: int = 365
    warmup_years: int = 1
    train_years: int = 3
    test_years: int = 1
    query_days: int = 365
    name: str = "hydrology"

    def __post_init__(self):
        if self.seq_len > 365 * self.warmup_years + 1:
            raise ValueError("seq_len must fit into the warm-up period (seq_len <= 365 * warmup_years + 1)")
        if self.query_days > 365 * self.test_years:
            raise ValueError("query_days must not exceed the test period")

    def _make(self, rng: np.random.Generator, climate: dict[str, float], params: dict[str, float]) -> Task:
        w, tr, te = (365 * y for y in (self.warmup_years, self.train_years, self.test_years))
        forcings = generate_weather(rng, climate, w + tr + te)
        q = hbv(forcings, params)
        x_tr, y_tr = basin_samples(forcings, q, self.seq_len, np.arange(w, w + tr))
        test_days = np.sort(rng.choice(np.arange(w + tr, w + tr + te), self.query_days, replace=False))
        x_te, y_te = basin_samples(forcings, q, self.seq_len, test_days)
        return Task(x_tr, y_tr, x_te, y_te, params={**climate, **params})

    def task(self, split: str, index: int) -> Task:
        rng = task_rng(self.seed, split, index)
        climate = {k: float(rng.uniform(*r)) for k, r in CLIMATE_RANGES.items()}
        params = {k: float(rng.uniform(*r)) for k, r in HBV_RANGES.items()}
        return self._make(rng, climate, params)

    def tasks(self, split: str, indices: list[int]) -> list[Task]:
        return [self.task(split, i) for i in indices]

    def nominal_task(self) -> Task:
        mid = lambda ranges: {k: (lo + hi) / 2 for k, (lo, hi) in ranges.items()}  # noqa: E731
        return self._make(task_rng(self.seed, "nominal", 0), mid(CLIMATE_RANGES), mid(HBV_RANGES))
