"""Closed-form and known-answer checks of IWA, IWV, DEV and the heuristic selectors."""
import numpy as np
import pytest

from adaptation import DEV, IWA, IWV, SOR, TCR, TMR, TMV, SourceOnly, TargetOracle, make_selector


def _random_preds(rng, k, n, c, sharp=1.0):
    logits = sharp * rng.normal(size=(k, n, c))
    p = np.exp(logits)
    return list(p / p.sum(axis=2, keepdims=True))


def _one_hot(y, c):
    return np.eye(c)[y]


def test_iwa_equals_direct_weighted_least_squares():
    rng = np.random.default_rng(0)
    k, n, c = 4, 60, 3
    src = _random_preds(rng, k, n, c)
    y = rng.integers(0, c, n)
    # Integer weights with mean 1; the target set is the source set with point i repeated w_i times, so the target
    # Gram matrix is the weighted source one and IWA must solve  min_c sum_i w_i ||sum_k c_k f_k(x_i) - e_{y_i}||^2.
    w = np.repeat([0.0, 1.0, 2.0], n // 3)
    rng.shuffle(w)
    tgt = [p[np.repeat(np.arange(n), w.astype(int))] for p in src]
    coef = IWA(rcond=0.0).fit(src, y, tgt, w).coef_
    design = np.stack([p.reshape(-1) for p in src], axis=1)          # rows (i, class), columns candidates
    target = _one_hot(y, c).reshape(-1)
    row_w = np.sqrt(np.repeat(w, c))
    expected = np.linalg.lstsq(design * row_w[:, None], target * row_w, rcond=None)[0]
    np.testing.assert_allclose(coef, expected, rtol=1e-8, atol=1e-10)


def test_iwa_formula_on_shifted_sets():
    rng = np.random.default_rng(1)
    k, c = 3, 4
    src, tgt = _random_preds(rng, k, 50, c), _random_preds(rng, k, 70, c)
    y, w = rng.integers(0, c, 50), rng.uniform(0.2, 3.0, 50)
    gram = np.array([[np.mean(np.sum(tgt[p] * tgt[q], axis=1)) for q in range(k)] for p in range(k)])
    g = np.array([np.mean(w * src[j][np.arange(50), y]) for j in range(k)])
    np.testing.assert_allclose(IWA(rcond=0.0).fit(src, y, tgt, w).coef_, np.linalg.solve(gram, g), rtol=1e-8)


def test_iwa_cutoff_regularises_duplicate_candidates():
    rng = np.random.default_rng(2)
    src = _random_preds(rng, 2, 40, 3)
    src = src + [src[0]]  # exact duplicate: G is singular, the cut-off splits the weight evenly
    y = rng.integers(0, 3, 40)
    coef = IWA(rcond=1e-6).fit(src, y, src, np.ones(40)).coef_
    assert np.isfinite(coef).all()
    assert coef[0] == pytest.approx(coef[2], abs=1e-8)


def test_iwa_recovers_perfect_candidate_under_shift():
    rng = np.random.default_rng(3)
    n = 4000
    xs, xt = rng.normal(0.0, 1.0, n), rng.normal(1.0, 1.0, n)
    w = np.exp(xs - 0.5)                       # exact p_T / p_S for N(1,1) over N(0,1)
    label = lambda x: (x > 0.8).astype(int)

    def candidates(x):
        sig = lambda z: 1 / (1 + np.exp(-z))
        soft = [sig(3 * (x - t)) for t in (-0.5, 0.0, 0.3)]
        return [np.stack([1 - p, p], 1) for p in soft] + [_one_hot(label(x), 2)]

    iwa = IWA(rcond=1e-6).fit(candidates(xs), label(xs), candidates(xt), w)
    assert np.argmax(np.abs(iwa.coef_)) == 3
    # The soft candidates are nearly collinear, so only the aggregate is pinned down: it must match the labels.
    mse = np.mean(np.sum((iwa.decision_function(candidates(xt)) - _one_hot(label(xt), 2)) ** 2, axis=1))
    assert mse < 0.01
    assert iwa.score(candidates(xt), label(xt)) > 0.99


def test_iwv_known_answer():
    # Candidate 0 errs on points 0, 1; candidate 1 on point 3; candidate 2 on point 2.
    y = np.array([0, 0, 1, 1])
    hard = np.array([[1, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    preds = [_one_hot(h, 2) for h in hard]
    w = np.array([0.1, 0.1, 3.0, 0.8])
    iwv = IWV().fit(preds, y, preds, w)
    np.testing.assert_allclose(iwv.risks_, [0.05, 0.2, 0.75])
    np.testing.assert_array_equal(iwv.coef_, [1.0, 0.0, 0.0])
    # Unweighted validation would prefer candidate 1 or 2 (one error each) over candidate 0 (two errors).
    np.testing.assert_allclose(IWV().fit(preds, y, preds, np.ones(4)).risks_, [0.5, 0.25, 0.25])


def test_dev_known_answer():
    y = np.zeros(4, dtype=int)
    w = np.array([0.0, 1.0, 1.0, 4.0])          # mean 1.5, unbiased variance 3
    errs = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]])
    preds = [_one_hot(e, 2) for e in errs]
    dev = DEV(loss="zero_one").fit(preds, y, preds, w)
    # Candidate 1: L = [0,0,0,4], Cov(L, w) = 10/3, eta = -10/9, risk = 1 - 1.5*10/9 + 10/9 = 4/9.
    # Candidate 2: L = [0,1,0,0], Cov(L, w) = -1/6, eta = 1/18, risk = 1/4 + 1.5/18 - 1/18 = 1/4 + 1/36.
    np.testing.assert_allclose(dev.risks_, [0.0, 4 / 9, 0.25 + 1 / 36], atol=1e-12)
    np.testing.assert_array_equal(dev.coef_, [1.0, 0.0, 0.0])


def test_dev_equals_iwv_for_constant_weights():
    rng = np.random.default_rng(4)
    preds, y = _random_preds(rng, 5, 30, 3), rng.integers(0, 3, 30)
    w = np.full(30, 2.0)
    dev = DEV(loss="cross_entropy").fit(preds, y, preds, w)
    iwv = IWV(loss="cross_entropy").fit(preds, y, preds, w)
    np.testing.assert_allclose(dev.risks_, iwv.risks_)


def test_tmv_majority_vote():
    hard = np.array([[0, 1, 2, 2], [0, 1, 1, 0], [1, 1, 2, 0]])
    preds = [_one_hot(h, 3) * 0.9 + 0.1 / 3 for h in hard]
    tmv = TMV().fit(preds, np.zeros(4, dtype=int), preds)
    np.testing.assert_array_equal(tmv.predict(preds), [0, 1, 2, 0])
    np.testing.assert_allclose(tmv.coef_, np.full(3, 1 / 3))


def test_pseudo_label_regressions_and_sor_match_least_squares():
    rng = np.random.default_rng(5)
    src, tgt = _random_preds(rng, 3, 40, 3, sharp=3.0), _random_preds(rng, 3, 50, 3, sharp=3.0)
    y = rng.integers(0, 3, 40)
    stacked = np.stack(tgt)
    votes = np.eye(3)[stacked.argmax(2)].sum(0) + 0.5 * stacked.mean(0)
    cases = [(TMR(rcond=0.0), tgt, votes.argmax(1)), (TCR(rcond=0.0), tgt, stacked.mean(0).argmax(1)),
             (SOR(rcond=0.0), src, y)]
    for selector, data, labels in cases:
        coef = selector.fit(src, y, tgt).coef_
        ones = np.ones(len(labels))
        expected = IWA(rcond=0.0).fit(data, labels, data, ones).coef_
        np.testing.assert_allclose(coef, expected, rtol=1e-8, err_msg=type(selector).__name__)


def test_reference_selectors():
    rng = np.random.default_rng(6)
    preds, y = _random_preds(rng, 4, 30, 2), rng.integers(0, 2, 30)
    preds[2] = _one_hot(y, 2)
    np.testing.assert_array_equal(TargetOracle().fit(preds, y).coef_, [0, 0, 1, 0])
    assert SourceOnly(1).fit(preds, y, preds).predict(preds).tolist() == preds[1].argmax(1).tolist()
    with pytest.raises(ValueError, match="index"):
        SourceOnly(9).fit(preds, y, preds)


@pytest.mark.parametrize("name", ["IWA", "IWV", "DEV", "SOR", "TMR", "TCR", "TMV"])
def test_bad_inputs_give_clear_errors(name):
    rng = np.random.default_rng(7)
    src, tgt = _random_preds(rng, 3, 20, 3), _random_preds(rng, 3, 25, 3)
    y, w = rng.integers(0, 3, 20), np.ones(20)
    sel = make_selector(name)
    with pytest.raises(ValueError, match="not fitted"):
        sel.predict(tgt)
    with pytest.raises(ValueError, match="differs"):
        sel.fit(src[:2] + [src[2][:10]], y, tgt, w)
    with pytest.raises(ValueError, match="same candidates"):
        sel.fit(src, y, tgt[:2], w)
    nan = [p.copy() for p in src]
    nan[1][3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sel.fit(nan, y, tgt, w)
    with pytest.raises(ValueError, match="single class"):
        sel.fit([np.ones((20, 1))] * 3, np.zeros(20, dtype=int), [np.ones((25, 1))] * 3, w)
    with pytest.raises(ValueError, match="summing to 1"):
        sel.fit([p * 2 for p in src], y, tgt, w)
    with pytest.raises(ValueError, match="labels in"):
        sel.fit(src, y + 3, tgt, w)
    with pytest.raises(ValueError, match="weights"):
        sel.fit(src, y, tgt, -w)
    sel.fit(src, y, tgt, w)
    with pytest.raises(ValueError, match="candidate arrays"):
        sel.predict(tgt[:2])
    assert sel.predict(tgt).shape == (25,)


def test_weights_required_and_names_checked():
    rng = np.random.default_rng(8)
    src = _random_preds(rng, 2, 10, 2)
    with pytest.raises(ValueError, match="needs importance weights"):
        IWA().fit(src, np.zeros(10, dtype=int), src)
    with pytest.raises(ValueError, match="expected one of"):
        make_selector("XYZ")
    with pytest.raises(ValueError, match="rcond"):
        IWA(rcond=-1.0)
    with pytest.raises(ValueError, match="loss"):
        IWV(loss="hinge")
