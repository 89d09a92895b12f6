"""Label-prior adjustment of a classifier's predicted probabilities.

A classifier trained on data with class prior ``train_prior`` produces
posteriors that are calibrated for that prior.  When the (unlabeled) target
set has a different label distribution, two corrections are offered here:

* :func:`estimate_prior_em` -- estimate the unknown target prior with the EM
  procedure of Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs
  of a classifier to new a priori probabilities: a simple procedure", and
  re-weight the posteriors accordingly.
* :func:`balance_to_prior` -- impose a *known* (or assumed, e.g. uniform)
  target prior by Sinkhorn-style normalisation, so that the predicted mass per
  class matches ``N * prior`` exactly.

:func:`parse_prior` turns a user/config specification into a prior vector and
:func:`adjust_predictions` is the single entry point that dispatches on a mode
and reports what changed.

Everything is pure numpy and computed in float64.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np

__all__ = [
    "estimate_prior_em",
    "balance_to_prior",
    "parse_prior",
    "adjust_predictions",
    "reweight",
    "carry_adjustment",
]

# Floor applied to probabilities before Sinkhorn scaling so that every class
# can receive mass (a column of exact zeros could never be scaled up).
_EPS = 1e-12
# Guard for divisions by sums that could underflow to zero.
_TINY = 1e-300


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _as_prob_matrix(probs: Any, name: str = "probs") -> np.ndarray:
    """Validate an N x K probability matrix and return it as float64.

    Rows are renormalised to sum to 1 (so un-normalised non-negative scores
    are accepted); rows summing to zero are rejected.
    """
    try:
        arr = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric N x K array: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (N, K); got an array with "
            f"{arr.ndim} dimension(s) and shape {arr.shape}"
        )
    n, k = arr.shape
    if n == 0 or k == 0:
        raise ValueError(
            f"{name} must have at least one row and one column; got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")
    if np.any(arr < 0):
        raise ValueError(
            f"{name} must be non-negative probabilities (min value is {arr.min():.6g}); "
            "pass softmax outputs, not logits"
        )
    row_sums = arr.sum(axis=1)
    zero_rows = np.flatnonzero(row_sums <= 0)
    if zero_rows.size:
        raise ValueError(
            f"{name} has {zero_rows.size} row(s) that sum to zero "
            f"(first at index {int(zero_rows[0])}); every row needs positive mass"
        )
    return arr / row_sums[:, None]


def _as_prior(prior: Any, num_labels: int, name: str = "prior", strict: bool = False) -> np.ndarray:
    """Validate a length-K prior vector, returning it normalised (float64).

    With ``strict=True`` every entry must be strictly positive.
    """
    try:
        arr = np.asarray(prior, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a sequence of {num_labels} non-negative numbers: {exc}"
        ) from exc
    if arr.ndim != 1 or arr.shape[0] != num_labels:
        raise ValueError(
            f"{name} must have exactly {num_labels} entries (one per label); "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values: {arr.tolist()}")
    if np.any(arr < 0):
        raise ValueError(f"{name} entries must be non-negative; got {arr.tolist()}")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum; got all zeros {arr.tolist()}")
    if strict and np.any(arr <= 0):
        raise ValueError(f"{name} entries must be strictly positive; got {arr.tolist()}")
    return arr / total


def _normalise_rows(mat: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    sums = mat.sum(axis=1, keepdims=True)
    out = mat / np.maximum(sums, _TINY)
    if fallback is not None:
        dead = sums[:, 0] <= 0
        if np.any(dead):
            out[dead] = fallback[dead]
    return out


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def estimate_prior_em(
    probs: Any,
    train_prior: Any,
    max_iter: int = 1000,
    tol: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Estimate the target label prior with the Saerens et al. (2002) EM.

    Given posteriors ``p_s(y|x)`` computed by a model trained under
    ``train_prior`` ``pi_s``, the procedure alternates

    * E-step: ``p_t(y|x) ∝ p_s(y|x) * pi_t(y) / pi_s(y)`` (rows renormalised);
    * M-step: ``pi_t = mean_x p_t(y|x)``;

    starting from ``pi_t = pi_s`` and stopping once the largest absolute change
    of ``pi_t`` falls below ``tol`` (or after ``max_iter`` iterations, with a
    ``RuntimeWarning``).

    Args:
        probs: ``(N, K)`` non-negative posteriors; rows are renormalised to 1.
        train_prior: ``(K,)`` class prior the posteriors were computed under.
            Normalised to sum 1; every entry must be strictly positive.
        max_iter: maximum number of EM iterations (>= 1).
        tol: convergence threshold on the max-abs change of the prior.

    Returns:
        ``(prior, adjusted_probs, n_iter)``: the estimated target prior
        ``(K,)``, the posteriors re-weighted to that prior ``(N, K)`` (rows
        sum to 1) and the number of EM iterations performed.
    """
    p = _as_prob_matrix(probs)
    k = p.shape[1]
    pi_s = _as_prior(train_prior, k, name="train_prior", strict=True)
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be positive; got {tol}")

    prior = pi_s.copy()
    n_iter = 0
    converged = False
    for n_iter in range(1, int(max_iter) + 1):
        adjusted = _normalise_rows(p * (prior / pi_s), fallback=p)
        new_prior = adjusted.mean(axis=0)
        delta = float(np.max(np.abs(new_prior - prior)))
        prior = new_prior
        if delta < tol:
            converged = True
            break
    if not converged:
        warnings.warn(
            f"estimate_prior_em did not converge within {max_iter} iterations "
            f"(last change {delta:.3g} >= tol {tol:.3g})",
            RuntimeWarning,
            stacklevel=2,
        )
    prior = prior / prior.sum()
    adjusted = _normalise_rows(p * (prior / pi_s), fallback=p)
    return prior, adjusted, n_iter


def balance_to_prior(
    probs: Any,
    prior: Any,
    max_iter: int = 1000,
    tol: float = 1e-9,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Rescale posteriors so the predicted class mass matches ``prior``.

    Sinkhorn-Knopp iteration on the ``(N, K)`` matrix: alternately scale each
    column so its sum equals ``N * prior[k]`` and renormalise each row to sum
    to 1.  The result has the form ``q_ik ∝ p_ik * c_k`` (a per-class
    re-weighting of the posteriors), with row sums exactly 1 and column sums
    ``N * prior`` up to ``tol``.  Taking the argmax of each row gives a
    prediction whose label distribution is (approximately) balanced to
    ``prior``.

    Computation is in float64; entries are floored at ``1e-12`` before scaling
    so that classes with all-zero probability can still receive mass.

    Args:
        probs: ``(N, K)`` non-negative probabilities; rows renormalised to 1.
        prior: ``(K,)`` non-negative target proportions (normalised to sum 1).
            Zero entries are allowed and produce all-zero columns.
        max_iter: maximum number of (column, row) scaling rounds.
        tol: convergence threshold on ``max_k |colsum_k / N - prior_k|``
            (i.e. measured in prior units, independent of ``N``).

    Returns:
        ``(adjusted_probs, n_iter, class_weights)``: the balanced
        row-stochastic matrix, the number of scaling rounds performed (0 if
        the input already satisfied the column constraint) and the per-class
        factors ``c`` (normalised to sum 1) with
        ``q_ik ∝ max(p_ik, 1e-12) * c_k``.  A ``RuntimeWarning`` is issued if
        ``max_iter`` is reached without convergence.
    """
    p = _as_prob_matrix(probs)
    n, k = p.shape
    target_prior = _as_prior(prior, k, name="prior")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be positive; got {tol}")

    target = n * target_prior
    q = _normalise_rows(np.maximum(p, _EPS))
    c = np.ones(k)
    n_iter = 0
    err = float(np.max(np.abs(q.sum(axis=0) / n - target_prior)))
    while err >= tol and n_iter < int(max_iter):
        scale = target / np.maximum(q.sum(axis=0), _TINY)
        q = _normalise_rows(q * scale)
        c = c * scale
        c = c / c.sum()  # the row normalisation does not change the ratios between classes
        n_iter += 1
        err = float(np.max(np.abs(q.sum(axis=0) / n - target_prior)))
    if err >= tol:
        warnings.warn(
            f"balance_to_prior did not converge within {max_iter} iterations "
            f"(max column error {err:.3g} >= tol {tol:.3g})",
            RuntimeWarning,
            stacklevel=2,
        )
    return q, n_iter, c


_STRING_MODES = ("none", "uniform", "em")


def parse_prior(spec: Any, num_labels: int) -> np.ndarray | None:
    """Turn a prior specification into a normalised prior vector.

    Accepted ``spec`` values:

    * ``None`` or ``"none"`` -> ``None`` (no adjustment).
    * ``"uniform"`` -> ``np.full(K, 1/K)``.
    * ``"em"`` -> ``None``.  The prior is *estimated* from the data by
      :func:`estimate_prior_em`, so there is nothing to parse; callers must
      check for ``"em"`` themselves (as :func:`adjust_predictions` does).
    * a list/tuple/array of ``K`` non-negative numbers, or a string of ``K``
      comma-separated numbers (``"0.2,0.3,0.5"``) -> normalised to sum 1.

    String keywords are case-insensitive.

    Raises:
        ValueError: for an unknown string, the wrong number of entries,
            negative/non-finite entries, or an all-zero vector.  The message
            names the expected ``K`` and what was given.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Integral) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer; got {num_labels!r}")
    k = int(num_labels)
    if spec is None:
        return None
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ("none", "em"):
            return None
        if key == "uniform":
            return np.full(k, 1.0 / k)
        if "," in key:
            try:
                values = [float(tok) for tok in key.split(",") if tok.strip()]
            except ValueError:
                raise ValueError(
                    f"could not parse prior {spec!r}: expected {k} comma-separated "
                    f"numbers, or one of {list(_STRING_MODES)}"
                ) from None
            return parse_prior(values, k)
        raise ValueError(
            f"unknown prior {spec!r}: expected one of {list(_STRING_MODES)} or a list of "
            f"{k} non-negative proportions (e.g. {[round(1.0 / k, 3)] * k})"
        )
    if isinstance(spec, (bytes, dict, set)) or np.isscalar(spec):
        raise ValueError(
            f"invalid prior {spec!r}: expected one of {list(_STRING_MODES)} or a list of "
            f"{k} non-negative proportions"
        )
    try:
        arr = np.asarray(spec, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"invalid prior {spec!r}: expected a list of {k} non-negative numbers"
        ) from None
    if arr.ndim != 1 or arr.shape[0] != k:
        given = arr.shape[0] if arr.ndim == 1 else f"shape {arr.shape}"
        raise ValueError(
            f"prior must have {k} entries (one per label, num_labels={k}); "
            f"got {given}: {np.asarray(spec).tolist()}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"prior entries must be finite numbers; got {arr.tolist()}")
    if np.any(arr < 0):
        raise ValueError(
            f"prior entries must be non-negative (>= 0); got {arr.tolist()} "
            f"(negative at index {int(np.flatnonzero(arr < 0)[0])})"
        )
    total = float(arr.sum())
    if total <= 0:
        raise ValueError(
            f"prior must not be all zeros; got {arr.tolist()} (give {k} proportions "
            "with a positive sum)"
        )
    return arr / total


def reweight(probs: Any, class_weights: Any) -> np.ndarray:
    """Apply per-class factors (``info["class_weights"]`` of :func:`adjust_predictions`) to other
    rows: ``q_ik ∝ max(p_ik, 1e-12) * c_k``. Fitted on one set (the unlabeled target set), the
    adjustment then carries to rows it was not fitted on, such as a labeled proxy of that set,
    instead of being refitted to the proxy's own class balance."""
    p = _as_prob_matrix(probs)
    c = _as_prior(class_weights, p.shape[1], name="class_weights")
    return _normalise_rows(np.maximum(p, _EPS) * c)


def carry_adjustment(probs: Any, fit_probs: Any, mode: Any, train_prior: Any = None) -> tuple[np.ndarray, dict]:
    """Adjust ``probs`` with the prior adjustment fitted on other rows, ``fit_probs`` (typically the
    unlabeled target set's predictions, as its submission gets them): :func:`adjust_predictions`
    on ``fit_probs``, its ``class_weights`` then applied to ``probs`` by :func:`reweight`. Returns
    the adjusted ``probs`` and the fitted info."""
    _, info = adjust_predictions(fit_probs, mode, train_prior=train_prior)
    return reweight(probs, info["class_weights"]), info


def _label_counts(mat: np.ndarray) -> list[int]:
    return [int(c) for c in np.bincount(mat.argmax(axis=1), minlength=mat.shape[1])]


def adjust_predictions(
    probs: Any,
    mode: Any,
    train_prior: Any = None,
) -> tuple[np.ndarray, dict]:
    """Adjust predicted probabilities for a target label prior.

    Args:
        probs: ``(N, K)`` finite, non-negative predicted probabilities
            (rows are renormalised to sum 1).
        mode: ``"none"``/``None`` (return the probabilities unchanged),
            ``"uniform"`` (balance to a uniform prior), ``"em"`` (estimate the
            target prior with :func:`estimate_prior_em` and return its
            re-weighted posteriors), or a list of ``K`` proportions (balance
            to that prior; also a comma-separated string, see
            :func:`parse_prior`).  ``"uniform"`` and lists use
            :func:`balance_to_prior`.
        train_prior: ``(K,)`` prior the model was trained under; only used by
            ``"em"`` (defaults to uniform).  Validated for length whenever
            given.

    Returns:
        ``(adjusted_probs, info)`` where ``adjusted_probs`` is a float64
        ``(N, K)`` row-stochastic array and ``info`` has keys

        * ``"mode"``: ``"none"``, ``"uniform"``, ``"em"`` or ``"custom"``
          (for an explicit list of proportions);
        * ``"prior"``: list of floats -- the imposed or estimated prior
          (``None`` for mode ``"none"``);
        * ``"changed"``: number of rows whose argmax differs from the input's;
        * ``"before_distribution"`` / ``"after_distribution"``: predicted
          label counts (lists of ints of length ``K``);
        * ``"iterations"``: EM or Sinkhorn iterations performed (0 for
          ``"none"``);
        * ``"class_weights"``: the per-class factors ``c`` (sum 1) of the
          adjustment, ``adjusted_ik ∝ p_ik * c_k``: :func:`reweight` applies
          the same adjustment to other rows (e.g. fitted on a target set,
          applied to a labeled proxy of it).

        For ``"em"`` the info also holds ``"train_prior"``.

    Raises:
        ValueError: on malformed ``probs`` (not 2-D, non-finite, negative,
            zero rows), an unknown ``mode``, or a ``mode``/``train_prior``
            whose length does not match ``K``.
    """
    p = _as_prob_matrix(probs)
    n, k = p.shape
    pi_s = None
    if train_prior is not None:
        pi_s = _as_prior(train_prior, k, name="train_prior", strict=True)

    is_em = isinstance(mode, str) and mode.strip().lower() == "em"
    before = _label_counts(p)

    if is_em:
        if pi_s is None:
            pi_s = np.full(k, 1.0 / k)
        prior, adjusted, n_iter = estimate_prior_em(p, pi_s)
        weights = prior / pi_s
        mode_name = "em"
        prior_out: list[float] | None = [float(x) for x in prior]
    else:
        target = parse_prior(mode, k)
        if target is None:
            adjusted, n_iter, mode_name, prior_out = p.copy(), 0, "none", None
            weights = np.ones(k)
        else:
            adjusted, n_iter, weights = balance_to_prior(probs, target)  # validates probs as p was
            mode_name = (
                "uniform" if isinstance(mode, str) and mode.strip().lower() == "uniform" else "custom"
            )
            prior_out = [float(x) for x in target]

    changed = int(np.sum(adjusted.argmax(axis=1) != p.argmax(axis=1)))
    info: dict[str, Any] = {
        "mode": mode_name,
        "prior": prior_out,
        "changed": changed,
        "before_distribution": before,
        "after_distribution": _label_counts(adjusted),
        "iterations": int(n_iter),
        "class_weights": [float(x) for x in weights / weights.sum()],
    }
    if is_em:
        info["train_prior"] = [float(x) for x in pi_s]
    return adjusted, info
