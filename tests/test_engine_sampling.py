"""The sampler (numpy, shared by both backends): greedy takes the first highest logit, top-p keeps
the tokens up to and including the one whose probability crosses top_p, and a seed fixes the draws."""

import numpy as np

from engine.sampling import Sampler, SamplingParams, sample

LOGITS = np.array([[2.0, 1.0, 0.5, 0.0, -1.0]], dtype=np.float32)  # probabilities .56 .21 .13 .08 .03


def draws(params: SamplingParams, n: int = 3000) -> np.ndarray:
    sampler = Sampler(params)
    return np.array([sample(LOGITS, [sampler])[0] for _ in range(n)])


def test_greedy_takes_the_first_highest_logit():
    logits = np.array([[0.0, 3.0, 3.0], [5.0, 1.0, 5.0]], dtype=np.float32)
    greedy = SamplingParams()
    assert sample(logits, [Sampler(greedy), Sampler(greedy)]) == [1, 0]


def test_temperature_sampling_follows_the_softmax():
    probs = np.exp(LOGITS[0] / 0.7) / np.exp(LOGITS[0] / 0.7).sum()
    freq = np.bincount(draws(SamplingParams(temperature=0.7, seed=0)), minlength=5) / 3000
    assert np.abs(freq - probs).max() < 0.03


def test_top_p_keeps_the_token_that_crosses_it():
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.8, seed=0)).tolist()) == {0, 1, 2}  # .56 + .21 < .8
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.5, seed=0), 200).tolist()) == {0}


def test_a_seed_fixes_the_draws():
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=42)
    assert draws(params, 50).tolist() == draws(params, 50).tolist()
    assert draws(params, 50).tolist() != draws(SamplingParams(temperature=1.0, top_p=0.95, seed=43), 50).tolist()
