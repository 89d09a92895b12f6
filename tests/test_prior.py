"""Tests for lorafit.prior (label-prior adjustment)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lorafit.prior import (
    adjust_predictions,
    balance_to_prior,
    reweight,
    carry_adjustment,
    estimate_prior_em,
    parse_prior,
)

MUS = np.array([-3.0, 0.0, 3.0])


def _gaussian_data(true_prior, model_prior, n, seed):
    """Labels ~ true_prior, x|y ~ N(mu_y, 1); exact posteriors under model_prior."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(MUS), size=n, p=true_prior)
    x = rng.normal(MUS[y], 1.0)
    loglik = -0.5 * (x[:, None] - MUS[None, :]) ** 2 + np.log(model_prior)[None, :]
    post = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)
    return y, post


# ---------------------------------------------------------------- EM ------


def test_em_recovers_shifted_prior_from_uniform_model():
    true = np.array([0.6, 0.3, 0.1])
    _, post = _gaussian_data(true, np.full(3, 1 / 3), 20000, seed=0)
    prior, adjusted, n_iter = estimate_prior_em(post, np.full(3, 1 / 3))
    assert np.max(np.abs(prior - true)) < 0.02
    assert prior.sum() == pytest.approx(1.0, abs=1e-12)
    assert 1 <= n_iter < 1000
    np.testing.assert_allclose(adjusted.sum(axis=1), 1.0, atol=1e-12)
    # fixed point: the mean adjusted posterior is the estimated prior
    np.testing.assert_allclose(adjusted.mean(axis=0), prior, atol=1e-7)
    # the naive estimate (mean of unadjusted posteriors) is noticeably worse
    assert np.max(np.abs(post.mean(axis=0) - true)) > np.max(np.abs(prior - true))


def test_em_with_non_uniform_train_prior():
    train = np.array([0.2, 0.2, 0.6])
    true = np.array([0.5, 0.4, 0.1])
    _, post = _gaussian_data(true, train, 20000, seed=1)
    prior, _, _ = estimate_prior_em(post, train)
    assert np.max(np.abs(prior - true)) < 0.02
    # unnormalised train prior is accepted and gives the same answer
    prior2, _, _ = estimate_prior_em(post, train * 5)
    np.testing.assert_allclose(prior2, prior, atol=1e-10)


def test_em_no_shift_keeps_prior():
    train = np.array([0.5, 0.25, 0.25])
    _, post = _gaussian_data(train, train, 20000, seed=2)
    prior, adjusted, _ = estimate_prior_em(post, train)
    assert np.max(np.abs(prior - train)) < 0.02
    # tiny prior correction -> posteriors barely move
    assert np.max(np.abs(adjusted - post)) < 0.1


def test_em_rejects_bad_train_prior():
    post = np.array([[0.7, 0.3], [0.2, 0.8]])
    with pytest.raises(ValueError, match="2 entries"):
        estimate_prior_em(post, [1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="strictly positive"):
        estimate_prior_em(post, [1.0, 0.0])


# ---------------------------------------------------------- Sinkhorn ------


def test_sinkhorn_column_and_row_sums():
    rng = np.random.default_rng(3)
    n = 300
    probs = rng.dirichlet(np.ones(4) * 0.7, size=n)
    prior = np.array([0.1, 0.2, 0.3, 0.4])
    q, n_iter, c = balance_to_prior(probs, prior)
    assert n_iter >= 1
    assert np.all(np.isfinite(q)) and np.all(q >= 0)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(q.sum(axis=0), n * prior, atol=1e-6)
    # the class weights returned are the factors: q is the posteriors times c, rows renormalised
    assert c.sum() == pytest.approx(1.0)
    expected = np.maximum(probs, 1e-12) * c
    np.testing.assert_allclose(q, expected / expected.sum(axis=1, keepdims=True), rtol=1e-9)


def test_sinkhorn_is_per_class_reweighting():
    # result must be q_ik ∝ p_ik * c_k: ratios q/p constant per column up to row factor
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(3), size=50)
    q, _, _ = balance_to_prior(probs, [0.5, 0.3, 0.2])
    ratio = q / probs
    ratio /= ratio[:, :1]  # remove the per-row factor
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0], ratio.shape), rtol=1e-8)


def test_sinkhorn_balanced_confident_input_unchanged():
    k, n = 3, 90
    probs = np.full((n, k), 0.01)
    probs[np.arange(n), np.arange(n) % k] = 0.98
    q, n_iter, _ = balance_to_prior(probs, np.full(k, 1 / k))
    assert n_iter == 0
    np.testing.assert_allclose(q, probs, atol=1e-12)
    adjusted, info = adjust_predictions(probs, "uniform")
    assert info["changed"] == 0
    assert info["before_distribution"] == [30, 30, 30]
    assert info["after_distribution"] == [30, 30, 30]
    np.testing.assert_allclose(adjusted, probs, atol=1e-12)


def test_uniform_balancing_of_skewed_predictions():
    rng = np.random.default_rng(5)
    n, k = 600, 3
    logits = rng.normal(size=(n, k)) * 1.5
    logits[:, 0] += 2.0  # strong bias to class 0
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    adjusted, info = adjust_predictions(probs, "uniform")
    assert info["before_distribution"][0] > 0.6 * n
    counts = np.bincount(adjusted.argmax(axis=1), minlength=k)
    assert counts.tolist() == info["after_distribution"]
    assert np.all(np.abs(counts - n / k) <= 0.1 * n / k)
    assert info["mode"] == "uniform"
    assert info["prior"] == pytest.approx([1 / 3] * 3)
    assert info["changed"] == int(np.sum(adjusted.argmax(1) != probs.argmax(1)))
    assert info["changed"] >= info["before_distribution"][0] - counts[0]
    assert info["iterations"] > 0


def test_sinkhorn_handles_zero_columns_and_zero_prior():
    # nobody predicts class 2 at all; uniform balancing must still give it mass
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [1.0, 0.0, 0.0]])
    q, _, _ = balance_to_prior(probs, [1, 1, 1])
    np.testing.assert_allclose(q.sum(axis=0), [4 / 3] * 3, atol=1e-6)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-12)
    # a zero prior entry yields an (essentially) empty column
    q0, _, _ = balance_to_prior(probs, [0.5, 0.5, 0.0])
    assert np.all(q0[:, 2] < 1e-9)
    np.testing.assert_allclose(q0.sum(axis=0)[:2], [2.0, 2.0], atol=1e-6)


# -------------------------------------------------- hand-made example -----


def test_changed_count_on_hand_made_3x2_example():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    # All three rows predict class 0.  Uniform balancing asks for column sums
    # of 1.5 each.  The result has the form q_i1 = r / (o_i + r) with odds
    # o_i = p_i0 / p_i1 = (9, 1.5, 11/9) and a single class ratio r solving
    # sum_i r / (o_i + r) = 1.5.  At r = 2 the sum is 2/11 + 2/3.5 + 2/(29/9)
    # = 1.374 < 1.5 and at r = 2.5 it is 0.217 + 0.625 + 0.672 = 1.514 > 1.5,
    # so 2 < r < 2.5.  Row i switches to class 1 iff r > o_i: rows 1 and 2
    # (o = 1.5, 1.22) switch, row 0 (o = 9) does not.
    adjusted, info = adjust_predictions(probs, "uniform")
    assert info["changed"] == 2
    assert info["before_distribution"] == [3, 0]
    assert info["after_distribution"] == [1, 2]
    assert adjusted.argmax(axis=1).tolist() == [0, 1, 1]

    # independent check of the closed form by bisection on r
    odds = probs[:, 0] / probs[:, 1]
    lo, hi = 2.0, 2.5
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.sum(mid / (odds + mid)) < 1.5:
            lo = mid
        else:
            hi = mid
    r = 0.5 * (lo + hi)
    np.testing.assert_allclose(adjusted[:, 1], r / (odds + r), atol=1e-8)

    # EM on the same input from a uniform train prior
    adj_em, info_em = adjust_predictions(probs, "em")
    prior, adj_direct, _ = estimate_prior_em(probs, [0.5, 0.5])
    np.testing.assert_allclose(adj_em, adj_direct)
    assert info_em["prior"] == pytest.approx(prior.tolist())
    assert info_em["mode"] == "em"
    assert info_em["train_prior"] == [0.5, 0.5]
    # EM pushes further towards the majority class: nothing flips
    assert info_em["changed"] == 0
    assert info_em["prior"][0] > 0.7


def test_adjust_none_and_custom_modes():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45]], dtype=np.float32)
    for mode in (None, "none", "NONE"):
        out, info = adjust_predictions(probs, mode)
        np.testing.assert_allclose(out, probs, rtol=1e-6)
        assert out.dtype == np.float64
        assert info == {
            "mode": "none",
            "prior": None,
            "changed": 0,
            "before_distribution": [3, 0],
            "after_distribution": [3, 0],
            "iterations": 0,
            "class_weights": [0.5, 0.5],
        }
    out, info = adjust_predictions(probs, [2, 1])
    assert info["mode"] == "custom"
    assert info["prior"] == pytest.approx([2 / 3, 1 / 3])
    np.testing.assert_allclose(out.sum(axis=0), [2.0, 1.0], atol=1e-6)
    assert isinstance(info["changed"], int)
    assert all(isinstance(c, int) for c in info["after_distribution"])


def test_adjust_predictions_validation():
    good = np.array([[0.7, 0.3], [0.2, 0.8]])
    with pytest.raises(ValueError, match="2-D"):
        adjust_predictions(np.array([0.5, 0.5]), "uniform")
    with pytest.raises(ValueError, match="non-finite"):
        adjust_predictions(np.array([[np.nan, 1.0], [0.5, 0.5]]), "uniform")
    with pytest.raises(ValueError, match="non-negative"):
        adjust_predictions(np.array([[-0.1, 1.1], [0.5, 0.5]]), "uniform")
    with pytest.raises(ValueError, match="sum to zero"):
        adjust_predictions(np.array([[0.0, 0.0], [0.5, 0.5]]), "uniform")
    with pytest.raises(ValueError, match="at least one row"):
        adjust_predictions(np.zeros((0, 2)), "uniform")
    with pytest.raises(ValueError, match="2 entries"):
        adjust_predictions(good, [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="train_prior"):
        adjust_predictions(good, "em", train_prior=[0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="unknown prior"):
        adjust_predictions(good, "balanced")


# ---------------------------------------------------------- parse_prior ---


def test_parse_prior_values():
    assert parse_prior(None, 3) is None
    assert parse_prior("none", 3) is None
    assert parse_prior("em", 3) is None
    assert parse_prior(" EM ", 3) is None
    np.testing.assert_allclose(parse_prior("uniform", 4), [0.25] * 4)
    np.testing.assert_allclose(parse_prior([1, 1, 2], 3), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(parse_prior((0.0, 3.0), 2), [0.0, 1.0])
    np.testing.assert_allclose(parse_prior(np.array([2.0, 6.0]), 2), [0.25, 0.75])
    np.testing.assert_allclose(parse_prior("1, 3", 2), [0.25, 0.75])


def test_parse_prior_errors():
    with pytest.raises(ValueError) as exc:
        parse_prior([0.5, 0.5], 3)
    assert "3 entries" in str(exc.value) and "got 2" in str(exc.value)
    with pytest.raises(ValueError, match="non-negative"):
        parse_prior([0.5, -0.1, 0.6], 3)
    with pytest.raises(ValueError, match="all zeros"):
        parse_prior([0, 0, 0], 3)
    with pytest.raises(ValueError) as exc:
        parse_prior("skewed", 3)
    msg = str(exc.value)
    assert "'skewed'" in msg and "uniform" in msg and "em" in msg and "3" in msg
    with pytest.raises(ValueError, match="finite"):
        parse_prior([0.5, float("nan")], 2)
    with pytest.raises(ValueError, match="2 comma-separated"):
        parse_prior("0.5,abc", 2)
    with pytest.raises(ValueError):
        parse_prior(0.5, 2)
    with pytest.raises(ValueError, match="num_labels"):
        parse_prior("uniform", 0)


# ------------------------------------------------------------ property ----


@st.composite
def _positive_matrix_and_prior(draw):
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 5))
    mat = draw(
        hnp.arrays(
            np.float64,
            (n, k),
            elements=st.floats(1e-6, 1e3, allow_nan=False, allow_infinity=False),
        )
    )
    prior = draw(
        hnp.arrays(
            np.float64,
            (k,),
            elements=st.floats(1e-3, 1.0, allow_nan=False, allow_infinity=False),
        )
    )
    return mat, prior


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_positive_matrix_and_prior())
def test_balance_to_prior_property_row_stochastic(data):
    mat, prior = data
    q, n_iter, _ = balance_to_prior(mat, prior, max_iter=200)
    assert q.shape == mat.shape
    assert np.all(np.isfinite(q))
    assert np.all(q >= 0)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-9)
    assert 0 <= n_iter <= 200


@pytest.mark.parametrize("mode", ["uniform", "em", "0.1,0.2,0.3,0.4"])
def test_class_weights_reproduce_the_adjustment(mode):
    """info["class_weights"] is the adjustment as per-class factors: reweight() of the same rows
    gives the adjusted probabilities (Sinkhorn's columns scalings, EM's prior ratio)."""
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([0.3] * 4, size=400) * [[3, 1, 1, 1]]  # leans to class 0
    probs /= probs.sum(1, keepdims=True)
    adjusted, info = adjust_predictions(probs, mode, train_prior=[0.4, 0.2, 0.2, 0.2] if mode == "em" else None)
    c = np.asarray(info["class_weights"])
    assert c.sum() == pytest.approx(1) and c[0] < c[1:].min()  # class 0 is down-weighted
    np.testing.assert_allclose(reweight(probs, c), adjusted, atol=1e-9)


def test_weights_fitted_on_one_set_carry_to_another():
    """Fitted on a (target) set, the factors re-weight other rows the same way, whatever those
    rows' own class balance; balancing the other rows themselves would differ."""
    rng = np.random.default_rng(2)
    target = rng.dirichlet([0.5] * 3, size=600) * [[4, 1, 1]]
    target /= target.sum(1, keepdims=True)
    _, info = adjust_predictions(target, "uniform")
    proxy = np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1]])
    c = np.asarray(info["class_weights"])
    expected = proxy * c / (proxy * c).sum(1, keepdims=True)
    np.testing.assert_allclose(reweight(proxy, info["class_weights"]), expected, atol=1e-12)
    assert reweight(proxy, c).argmax(1).tolist() == [1, 2, 1]  # class 0 loses its lead on the first two rows
    assert adjust_predictions(proxy, "uniform")[0].argmax(1).tolist() != [1, 2, 1]
    carried, fitted = carry_adjustment(proxy, target, "uniform")  # the two steps in one call
    np.testing.assert_allclose(carried, expected, atol=1e-12)
    assert fitted["class_weights"] == info["class_weights"]
    with pytest.raises(ValueError, match="class_weights must have exactly 3 entries"):
        reweight(proxy, [0.5, 0.5])
