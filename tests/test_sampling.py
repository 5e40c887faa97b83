"""The shared sampler: top-k filtering and inverse-CDF sampling."""

import numpy as np
import pytest

from shared.sampling import draw_uniforms, invert_cdf, sample_next, sampling_probabilities, top_k_filter


def test_invert_cdf_by_hand():
    probs = np.array([[0.1, 0.2, 0.3, 0.4]] * 5)
    uniforms = np.array([0.0, 0.09999, 0.1, 0.5999, 0.99999])
    # Cumulative: 0.1, 0.3, 0.6, 1.0; the first entry above the uniform wins.
    assert invert_cdf(probs, uniforms).tolist() == [0, 0, 1, 2, 3]


def test_zero_probability_never_picked():
    probs = np.array([[0.0, 0.5, 0.0, 0.5, 0.0]])
    picked = {int(invert_cdf(probs, np.array([u]))[0]) for u in np.linspace(0, 0.999999, 1001)}
    assert picked == {1, 3}


def test_top_k_keeps_ties_with_kth():
    logits = np.array([[0.0, 5.0, 3.0, 3.0, 1.0]])
    kept = np.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, True, True, False]]
    assert np.array_equal(top_k_filter(logits, 5), logits)
    assert np.array_equal(top_k_filter(logits, None), logits)


def test_temperature_sharpens():
    logits = np.array([[1.0, 2.0, 3.0]])
    cold = sampling_probabilities(logits, temperature=0.1)
    hot = sampling_probabilities(logits, temperature=10.0)
    assert cold[0, 2] > 0.99
    assert hot.max() < 0.4
    assert np.allclose(cold.sum(), 1.0)
    assert np.allclose(hot.sum(), 1.0)


def test_greedy_with_top_k_one():
    logits = np.random.default_rng(0).standard_normal((4, 30))
    uniforms = draw_uniforms(1, 1, 4)[0]
    assert np.array_equal(sample_next(logits, uniforms, top_k=1), logits.argmax(-1))


def test_sampling_frequencies_follow_probabilities():
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    uniforms = draw_uniforms(0, 20000, 1)
    counts = np.bincount([int(sample_next(logits, u)[0]) for u in uniforms], minlength=3)
    assert np.allclose(counts / counts.sum(), [0.5, 0.3, 0.2], atol=0.015)


def test_uniforms_depend_only_on_seed():
    assert np.array_equal(draw_uniforms(7, 5, 3), draw_uniforms(7, 5, 3))
    assert draw_uniforms(7, 5, 3).shape == (5, 3)


@pytest.mark.parametrize("temperature, top_k", [(0.0, None), (-2.0, None), (1.0, 0), (1.0, -3), (1.0, 2.5)])
def test_bad_sampling_arguments(temperature, top_k):
    with pytest.raises(ValueError):
        sampling_probabilities(np.zeros((1, 4)), temperature, top_k)
