import math

import numpy as np
import pytest
import torch

from fewshot.tasks import (HydrologyFamily, RLCFamily, SinusoidFamily, generate_weather, hbv, inductance,
                           make_tasks, sample_supports, simulate_rlc)
from fewshot.tasks.rlc import filtered_white_noise


def test_sinusoid_tasks_are_seeded_and_follow_the_formula():
    fam = SinusoidFamily(seed=3, train_pool=20, test_pool=10)
    a, b = fam.task("test", 5), SinusoidFamily(seed=3, train_pool=20, test_pool=10).task("test", 5)
    torch.testing.assert_close(a.x_train, b.x_train)
    torch.testing.assert_close(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, fam.task("test", 6).x_train)
    assert not torch.equal(a.x_train, fam.task("val", 5).x_train)
    amp, phase = a.params["amplitude"], a.params["phase"]
    assert 0.1 <= amp <= 5.0 and 0.0 <= phase <= math.pi
    torch.testing.assert_close(a.y_train, amp * torch.sin(a.x_train - phase), atol=1e-5, rtol=1e-5)
    assert a.x_train.abs().max() <= 5.0


def test_supports_are_reproducible_subsets_of_the_pool():
    tasks = make_tasks(SinusoidFamily(train_pool=30, test_pool=5), "train", 4)
    x1, y1 = sample_supports(tasks, 7, seed=1)
    x2, _ = sample_supports(tasks, 7, seed=1)
    assert x1.shape == (4, 7, 1) and torch.equal(x1, x2)
    for t, xs in zip(tasks, x1):
        assert all((t.x_train == v).all(-1).any() for v in xs)
    with pytest.raises(ValueError, match="support size"):
        sample_supports(tasks, 31, seed=0)


def test_inductance_saturates():
    L = 50e-6
    assert inductance(np.array(0.0), L) == pytest.approx(L * (0.9 * (np.arctan(25) / np.pi + 0.5) + 0.1))
    assert inductance(np.array(20.0), L) == pytest.approx(0.1 * L, rel=0.05)
    assert inductance(np.array(20.0), L, nonlinear=False) == pytest.approx(L)


def test_rlc_simulator_matches_analytic_step_response_in_linear_limit():
    R, L, C, V, dt = 3.0, 50e-6, 270e-9, 10.0, 0.5e-6
    n = 400
    states = simulate_rlc(np.full((1, n), V), dt, R, L, C, nonlinear=False, rtol=1e-8)[0]
    t = np.arange(n) * dt
    alpha = R / (2 * L)
    wd = math.sqrt(1 / (L * C) - alpha**2)
    v_c = V * (1 - np.exp(-alpha * t) * (np.cos(wd * t) + alpha / wd * np.sin(wd * t)))
    i_l = C * V * np.exp(-alpha * t) * (alpha**2 + wd**2) / wd * np.sin(wd * t)
    np.testing.assert_allclose(states[:, 0], v_c, atol=1e-3 * V)
    np.testing.assert_allclose(states[:, 1], i_l, atol=1e-3 * np.abs(i_l).max())


def test_rlc_tasks_are_reproducible_and_windowed():
    fam = RLCFamily(seed=1, window=16, train_windows=6, test_windows=2)
    a, b = fam.task("train", 2), RLCFamily(seed=1, window=16, train_windows=6, test_windows=2).task("train", 2)
    assert a.x_train.shape == (6, 16, 3) and a.y_train.shape == (6, 16, 2) and a.x_test.shape == (2, 16, 3)
    torch.testing.assert_close(a.y_train, b.y_train)
    assert 1.0 <= a.params["R"] <= 14.0 and 20e-6 <= a.params["L"] <= 140e-6
    torch.testing.assert_close(a.x_train[:, 0, 1:], a.y_train[:, 0])  # initial state is given at step 0
    assert a.x_train[:, 1:, 1:].abs().max() == 0


def test_filtered_noise_has_requested_std_and_bandwidth():
    u = filtered_white_noise(np.random.default_rng(0), 4000, 0.5e-6, 150e3, 80.0)
    assert u.std() == pytest.approx(80.0)
    spec = np.abs(np.fft.rfft(u)) ** 2
    freqs = np.fft.rfftfreq(len(u), 0.5e-6)
    assert spec[freqs > 400e3].sum() < 1e-3 * spec.sum()


def test_weather_generator_and_hbv_are_physical():
    climate = dict(t_mean=5.0, t_amp=10.0, p_dry_wet=0.3, p_wet_wet=0.6, p_intensity=6.0, rad_mean=180.0)
    f = generate_weather(np.random.default_rng(0), climate, 730)
    assert f.shape == (730, 5)
    assert (f[:, 0] >= 0).all() and 0.2 < (f[:, 0] > 0).mean() < 0.6  # wet-day fraction of the Markov chain
    assert (f[:, 2] > f[:, 3]).all() and (f[:, 4] > 0).all()
    params = dict(TT=0.0, CFMAX=3.0, FC=200.0, LP=0.7, BETA=2.0, K0=0.2, K1=0.1, K2=0.02, UZL=20.0, PERC=2.0, MAXBAS=3.0)
    q = hbv(f, params)
    assert (q >= 0).all() and q.sum() < f[:, 0].sum()  # evaporation and storage take their share
    dry = f.copy()
    dry[:, 0] = 0.0
    assert hbv(dry, params).max() == pytest.approx(0.0)  # no rain, empty response stores: no flow


def test_hydrology_tasks_are_reproducible():
    fam = HydrologyFamily(seed=0, seq_len=30, warmup_years=1, train_years=1, test_years=1, query_days=50)
    a, b = fam.task("val", 1), HydrologyFamily(seed=0, seq_len=30, warmup_years=1, train_years=1, test_years=1,
                                              query_days=50).task("val", 1)
    assert a.x_train.shape == (365, 30, 5) and a.y_train.shape == (365, 1) and a.x_test.shape == (50, 30, 5)
    torch.testing.assert_close(a.x_test, b.x_test)
    torch.testing.assert_close(a.y_train, b.y_train)
    # Consecutive samples are windows shifted by one day.
    torch.testing.assert_close(a.x_train[1, :-1], a.x_train[0, 1:])
