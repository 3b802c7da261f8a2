"""Model selection and aggregation for unsupervised domain adaptation, scikit-learn style.

Every selector is fitted on the *probability* outputs of K candidate models,
``fit(source_preds, source_labels, target_preds, weights)``, where ``*_preds`` is a sequence of K arrays of shape
(n, classes), ``source_labels`` holds the labelled source points' classes and ``weights`` their importance weights
w(x) ~ p_T(x) / p_S(x). The fitted ``coef_`` (K,) says how the candidates are combined; ``decision_function(preds)``
returns the combined scores and ``predict(preds)`` their argmax. Selectors that pick one model have a one-hot ``coef_``.

- IWA: importance-weighted least-squares aggregation (closed form, pseudo-inverse with cut-off ``rcond``).
- IWV: the candidate with the lowest importance-weighted validation loss.
- DEV: deep embedded validation, IWV with the control variate of You et al. (2019).
- SOR / TMR / TCR: unweighted least-squares aggregation on source labels / target majority-vote pseudo-labels /
  target pseudo-labels from the mean probability.
- TMV: per-sample majority vote of the candidates' predicted classes.
- SourceOnly / TargetOracle: reference columns (a fixed candidate, e.g. lambda = 0; the best candidate on target labels).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .validation import check_labels, check_preds, check_weights

_LOG_EPS = 1e-12


def pointwise_loss(preds: np.ndarray, labels: np.ndarray, loss: str) -> np.ndarray:
    """Per-sample loss of stacked predictions (K, n, C) against labels (n,): returns (K, n)."""
    p_true = preds[:, np.arange(labels.shape[0]), labels]
    if loss == "zero_one":
        return (preds.argmax(axis=2) != labels[None, :]).astype(np.float64)
    if loss == "cross_entropy":
        return -np.log(np.clip(p_true, _LOG_EPS, None))
    raise ValueError(f"loss: expected 'zero_one' or 'cross_entropy', got {loss!r}")


def least_squares_coef(gram_preds: np.ndarray, fit_preds: np.ndarray, fit_labels: np.ndarray,
                       fit_weights: np.ndarray, rcond: float) -> np.ndarray:
    """Coefficients c = pinv(G) g of the aggregation sum_k c_k f_k closest to the one-hot labels in mean square.

    G_pq = mean_x <f_p(x), f_q(x)> over ``gram_preds`` (no labels needed); g_k = mean_i w_i f_k(x_i)[y_i] over the
    labelled ``fit_preds``. Eigenvalues of G below ``rcond`` times the largest are cut off (the only regulariser).
    """
    gram = np.einsum("pnc,qnc->pq", gram_preds, gram_preds) / gram_preds.shape[1]
    p_true = fit_preds[:, np.arange(fit_labels.shape[0]), fit_labels]
    g = (p_true * fit_weights[None, :]).mean(axis=1)
    eigval, eigvec = np.linalg.eigh(gram)
    keep = eigval > rcond * eigval.max()
    inverse = (eigvec[:, keep] / eigval[keep]) @ eigvec[:, keep].T
    return inverse @ g


def _one_hot(index: int, size: int) -> np.ndarray:
    coef = np.zeros(size)
    coef[index] = 1.0
    return coef


def _check_rcond(rcond: float) -> None:
    if not 0.0 <= rcond < 1.0:
        raise ValueError(f"rcond: expected a relative cut-off in [0, 1), got {rcond}")


class Selector:
    """Base class: validates inputs, stores ``coef_``, ``n_models_``, ``n_classes_``; subclasses set the coefficients."""

    requires_weights = False

    def fit(self, source_preds: Sequence[np.ndarray], source_labels: np.ndarray,
            target_preds: Sequence[np.ndarray], weights: np.ndarray | None = None) -> Selector:
        """Fit on held-out labelled source and unlabelled target predictions of the same K candidates."""
        src = check_preds(source_preds, "source_preds")
        tgt = check_preds(target_preds, "target_preds")
        if src.shape[0] != tgt.shape[0] or src.shape[2] != tgt.shape[2]:
            raise ValueError(f"source_preds has {src.shape[0]} candidates x {src.shape[2]} classes but target_preds "
                             f"has {tgt.shape[0]} x {tgt.shape[2]}; expected the same candidates and classes")
        labels = check_labels(source_labels, src.shape[1], src.shape[2], "source_labels")
        if weights is None:
            if self.requires_weights:
                raise ValueError(f"{type(self).__name__} needs importance weights for the source points, got None")
            w = np.ones(src.shape[1])
        else:
            w = check_weights(weights, src.shape[1])
        self.n_models_, self.n_classes_ = src.shape[0], src.shape[2]
        self.coef_ = self._coefficients(src, labels, tgt, w)
        return self

    def _coefficients(self, src: np.ndarray, labels: np.ndarray, tgt: np.ndarray, w: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ValueError(f"{type(self).__name__} is not fitted yet: call fit first")

    def decision_function(self, preds: Sequence[np.ndarray]) -> np.ndarray:
        """Combined scores sum_k coef_k f_k(x), shape (n, classes)."""
        self._check_fitted()
        stacked = check_preds(preds, "preds", n_models=self.n_models_)
        return np.einsum("k,knc->nc", self.coef_, stacked)

    def predict(self, preds: Sequence[np.ndarray]) -> np.ndarray:
        """Predicted classes (n,)."""
        return self.decision_function(preds).argmax(axis=1)

    def score(self, preds: Sequence[np.ndarray], labels: np.ndarray) -> float:
        """Accuracy of ``predict(preds)`` against ``labels``."""
        pred = self.predict(preds)
        return float((pred == check_labels(labels, pred.shape[0], self.n_classes_)).mean())


class IWA(Selector):
    """Importance-weighted least-squares aggregation (Dinu et al., ICLR 2023).

    G_pq is the mean over the unlabelled target points of <f_p(x), f_q(x)>, g_k the importance-weighted mean over the
    labelled source points of f_k(x_i)[y_i]; ``coef_ = pinv(G, rcond) g``.
    """

    requires_weights = True

    def __init__(self, rcond: float = 1e-3):
        _check_rcond(rcond)
        self.rcond = rcond

    def _coefficients(self, src, labels, tgt, w):
        return least_squares_coef(tgt, src, labels, w, self.rcond)


class _RiskSelector(Selector):
    """Picks the candidate with the lowest estimated target risk; the risks are kept in ``risks_``."""

    requires_weights = True

    def __init__(self, loss: str):
        pointwise_loss(np.full((1, 1, 2), 0.5), np.zeros(1, dtype=np.int64), loss)
        self.loss = loss

    def _coefficients(self, src, labels, tgt, w):
        self.risks_ = self._risks(pointwise_loss(src, labels, self.loss), w)
        return _one_hot(int(np.argmin(self.risks_)), src.shape[0])

    def _risks(self, losses: np.ndarray, w: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class IWV(_RiskSelector):
    """Importance-weighted validation (Sugiyama et al., 2007): argmin_k mean_i w_i loss_k(x_i, y_i)."""

    def __init__(self, loss: str = "zero_one"):
        super().__init__(loss)

    def _risks(self, losses, w):
        return (losses * w[None, :]).mean(axis=1)


class DEV(_RiskSelector):
    """Deep embedded validation (You et al., 2019): weighted risk with a control variate.

    With L = w * loss, risk = mean(L) + eta * mean(w) - eta, eta = -Cov(L, w) / Var(w) (eta = 0 for constant w).
    """

    def __init__(self, loss: str = "cross_entropy"):
        super().__init__(loss)

    def _risks(self, losses, w):
        weighted = losses * w[None, :]
        var_w = w.var(ddof=1) if w.shape[0] > 1 else 0.0
        if var_w <= 1e-12 * max(1.0, float(np.mean(w)) ** 2):
            return weighted.mean(axis=1)
        cov = ((weighted - weighted.mean(axis=1, keepdims=True)) * (w - w.mean())[None, :]).sum(axis=1) / (w.shape[0] - 1)
        eta = -cov / var_w
        return weighted.mean(axis=1) + eta * w.mean() - eta


class SOR(Selector):
    """Source regression: unweighted least-squares aggregation fitted on the labelled source points."""

    def __init__(self, rcond: float = 1e-3):
        _check_rcond(rcond)
        self.rcond = rcond

    def _coefficients(self, src, labels, tgt, w):
        return least_squares_coef(src, src, labels, np.ones_like(w), self.rcond)


class _PseudoLabelRegression(Selector):
    """Least-squares aggregation on the target points towards pseudo-labels made from the candidates."""

    def __init__(self, rcond: float = 1e-3):
        _check_rcond(rcond)
        self.rcond = rcond

    def _coefficients(self, src, labels, tgt, w):
        pseudo = self._pseudo_labels(tgt)
        return least_squares_coef(tgt, tgt, pseudo, np.ones(tgt.shape[1]), self.rcond)

    def _pseudo_labels(self, tgt: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def majority_vote(stacked: np.ndarray) -> np.ndarray:
    """Per-sample majority vote of the candidates' argmax classes (K, n, C) -> (n,); ties go to the higher mean
    probability."""
    votes = np.eye(stacked.shape[2])[stacked.argmax(axis=2)].sum(axis=0)
    # The mean probability is < 1 and votes differ by >= 1, so it only breaks ties.
    return (votes + 0.5 * stacked.mean(axis=0)).argmax(axis=1)


class TMR(_PseudoLabelRegression):
    """Target majority-vote regression: pseudo-labels are the candidates' per-sample majority vote."""

    def _pseudo_labels(self, tgt):
        return majority_vote(tgt)


class TCR(_PseudoLabelRegression):
    """Target confidence regression: pseudo-labels are the argmax of the candidates' mean probability."""

    def _pseudo_labels(self, tgt):
        return tgt.mean(axis=0).argmax(axis=1)


class TMV(Selector):
    """Target majority vote: each sample gets the class most candidates predict (equal votes, ``coef_ = 1/K``)."""

    def _coefficients(self, src, labels, tgt, w):
        return np.full(src.shape[0], 1.0 / src.shape[0])

    def decision_function(self, preds):
        """Vote shares per class (ties broken by the mean probability)."""
        self._check_fitted()
        stacked = check_preds(preds, "preds", n_models=self.n_models_)
        votes = np.einsum("k,knc->nc", self.coef_, np.eye(stacked.shape[2])[stacked.argmax(axis=2)])
        return votes + 0.5 / self.n_models_ * stacked.mean(axis=0)


class SourceOnly(Selector):
    """Reference: always the candidate at ``index`` (e.g. the lambda = 0 model trained on source labels only)."""

    def __init__(self, index: int = 0):
        self.index = index

    def _coefficients(self, src, labels, tgt, w):
        if not 0 <= self.index < src.shape[0]:
            raise ValueError(f"index: expected a candidate index in [0, {src.shape[0]}), got {self.index}")
        return _one_hot(self.index, src.shape[0])


class TargetOracle(Selector):
    """Reference with target labels: the single candidate with the highest accuracy on the given target points.

    Not a UDA method (it reads target labels); ``fit(target_preds, target_labels)``.
    """

    def fit(self, target_preds: Sequence[np.ndarray], target_labels: np.ndarray) -> TargetOracle:
        tgt = check_preds(target_preds, "target_preds")
        labels = check_labels(target_labels, tgt.shape[1], tgt.shape[2], "target_labels")
        self.n_models_, self.n_classes_ = tgt.shape[0], tgt.shape[2]
        self.accuracies_ = 1.0 - pointwise_loss(tgt, labels, "zero_one").mean(axis=1)
        self.coef_ = _one_hot(int(np.argmax(self.accuracies_)), tgt.shape[0])
        return self


SELECTORS: dict[str, type[Selector]] = {
    "IWA": IWA, "IWV": IWV, "DEV": DEV, "SOR": SOR, "TMR": TMR, "TCR": TCR, "TMV": TMV,
}


def make_selector(name: str, **kwargs) -> Selector:
    """Selector by name (``SELECTORS`` keys); ``kwargs`` go to its constructor."""
    if name not in SELECTORS:
        raise ValueError(f"selector: expected one of {sorted(SELECTORS)}, got {name!r}")
    return SELECTORS[name](**kwargs)
