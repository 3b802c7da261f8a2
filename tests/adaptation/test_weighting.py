"""Importance weights from a domain classifier recover a known Gaussian density ratio."""
import numpy as np
import pytest

from adaptation import BackboneConfig, ImportanceWeighter, TrainConfig, WeighterConfig, density_ratio


def _gaussians(n_s, n_t, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, (n_s, 1)), rng.normal(1.0, 1.0, (n_t, 1))


def _true_ratio(x):
    return np.exp(x[:, 0] - 0.5)  # N(1, 1) / N(0, 1)


def test_density_ratio_formula():
    np.testing.assert_allclose(density_ratio(np.array([0.5, 0.8]), 100, 50), [2.0, 8.0])


def test_logistic_weights_recover_gaussian_ratio_with_unequal_sizes():
    xs, xt = _gaussians(3000, 1000)
    weighter = ImportanceWeighter(WeighterConfig(estimator="logistic", C=100.0)).fit(xs, xt)
    grid = np.linspace(-1.5, 2.0, 15)[:, None]
    np.testing.assert_allclose(np.log(weighter.predict(grid)), np.log(_true_ratio(grid)), atol=0.15)
    assert weighter.predict(xs).mean() == pytest.approx(1.0, abs=0.1)  # E_S[w] = 1


def test_neural_weights_recover_gaussian_ratio():
    xs, xt = _gaussians(2000, 2000, seed=1)
    cfg = WeighterConfig(estimator="neural", backbone=BackboneConfig(name="mlp", hidden=32, depth=2),
                         train=TrainConfig(steps=400, batch_size=256, lr=3e-3, weight_decay=0.0))
    weighter = ImportanceWeighter(cfg, seed=0).fit(xs, xt)
    grid = np.linspace(-1.0, 2.0, 13)[:, None]
    err = np.abs(np.log(weighter.predict(grid)) - np.log(_true_ratio(grid)))
    assert err.mean() < 0.2 and err.max() < 0.5


def test_weighter_input_checks():
    xs, xt = _gaussians(20, 20)
    with pytest.raises(ValueError, match="estimator"):
        ImportanceWeighter(WeighterConfig(estimator="kmm"))
    with pytest.raises(ValueError, match="not fitted"):
        ImportanceWeighter(WeighterConfig(estimator="logistic")).predict(xs)
    with pytest.raises(ValueError, match="expected equal"):
        ImportanceWeighter(WeighterConfig(estimator="logistic")).fit(xs, np.zeros((20, 2)))
    bad = xs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ImportanceWeighter(WeighterConfig(estimator="logistic")).fit(bad, xt)
    fitted = ImportanceWeighter(WeighterConfig(estimator="logistic", clip=1.5)).fit(xs, xt)
    assert fitted.predict(np.array([[5.0]]))[0] == 1.5
