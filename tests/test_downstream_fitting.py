"""The shared training loop (`synthecho.fitting`): selection of the best validation step, early stopping,
the convergence flag, fixed budgets without validation — on a model whose validation curve is scripted,
so every expected step is computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from synthecho.errors import SynthechoError
from synthecho.fitting import Budget, EpochSampler, UniformSampler, fit


class Scripted:
    """A task whose validation scores are a fixed list (one per validation, in order), and whose loss
    moves the single weight, so "the weights of step s" are recognisable after loading back."""

    def __init__(self, scores):
        self.scores, self.calls = list(scores), 0

    def batch_loss(self, model, data, indices, rng):
        return (model.weight - 1.0).pow(2).sum()  # every step moves the weight towards 1

    def validate(self, model):
        self.calls += 1
        return self.scores[self.calls - 1]


def scalar_model():
    import torch

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    return model


def weight_after(steps: int, learning_rate: float) -> float:
    """The weight plain Adam reaches after `steps` steps on (w - 1)^2 from 0 (the same loop, no stopping)."""
    model = scalar_model()
    fit(model, Scripted([0.0] * 100), list(range(4)), Budget(steps, 2, learning_rate), seed=0, progress=False)
    return model.weight.item()


def test_the_best_validation_step_is_kept_and_ties_keep_the_earlier():
    # Validations at 2, 4, 6, 8, 10: scores 0.1 0.5 0.3 0.5 0.2 -> best 0.5 at step 4 (the later tie loses).
    model = scalar_model()
    task = Scripted([0.1, 0.5, 0.3, 0.5, 0.2])
    result = fit(model, task, list(range(4)), Budget(10, 2, 0.1, validate_every=2), seed=0, progress=False)
    assert [h["step"] for h in result.history] == [2, 4, 6, 8, 10]
    assert (result.best_step, result.steps, result.stopped_early, result.converged) == (4, 10, False, True)
    assert result.validation == {"score": 0.5}
    assert model.weight.item() == pytest.approx(weight_after(4, 0.1))  # step 4's weights, loaded back
    assert result.record()["validation_score"] == 0.5 and "losses" not in result.record()


def test_patience_stops_after_that_many_validations_without_gain():
    # Scores 0.2 0.4 0.3 0.35 0.1 ...: best at step 4; patience 3 stops at the third validation after it.
    task = Scripted([0.2, 0.4, 0.3, 0.35, 0.1, 0.9, 0.9])
    result = fit(
        scalar_model(), task, [0, 1], Budget(14, 2, 0.1, validate_every=2, patience=3), seed=0, progress=False
    )
    assert (result.best_step, result.steps, result.stopped_early, result.converged) == (4, 10, True, True)
    assert task.calls == 5 and len(result.losses) == 10  # the 0.9 at step 12 is never seen


def test_a_run_whose_best_is_its_last_validation_is_not_converged():
    task = Scripted([0.1, 0.2, 0.3])
    result = fit(
        scalar_model(), task, [0, 1], Budget(6, 2, 0.1, validate_every=2, patience=2), seed=0, progress=False
    )
    assert (result.best_step, result.steps, result.stopped_early, result.converged) == (6, 6, False, False)
    # validation before the first step (fine-tuning): a pretrained model that training never beats
    start = fit(scalar_model(), Scripted([0.9, 0.1, 0.2]), [0, 1], Budget(4, 2, 0.1, validate_every=2),
                seed=0, validate_at_start=True, progress=False)  # fmt: skip
    assert (start.best_step, start.converged) == (0, True) and float(start.history[0]["step"]) == 0


def test_named_validation_values_and_a_fixed_budget():
    class Named(Scripted):
        def validate(self, model):
            value = super().validate(model)
            return {"lv": value, "mean": value / 2}

    result = fit(scalar_model(), Named([0.4, 0.8]), [0, 1], Budget(4, 2, 0.1, validate_every=2), seed=0,
                 select="mean", progress=False)  # fmt: skip
    assert result.history == [{"step": 2, "lv": 0.4, "mean": 0.2}, {"step": 4, "lv": 0.8, "mean": 0.4}]
    # No validation: the whole budget, the last weights, nothing to call converged.
    fixed = fit(scalar_model(), Scripted([]), [0, 1], Budget(5, 2, 0.1), seed=0, progress=False)
    assert (fixed.steps, fixed.best_step, fixed.converged, fixed.history) == (5, None, None, [])
    with pytest.raises(SynthechoError, match="patience"):
        Budget(5, 2, 0.1, patience=2)


def test_samplers_see_every_item_once_per_epoch_or_draw_with_replacement():
    rng = np.random.default_rng(0)
    epoch = EpochSampler(5, 2, rng)
    drawn = np.concatenate([epoch.next() for _ in range(5)])  # 10 draws = 2 epochs of 5
    assert sorted(drawn[:5].tolist()) == sorted(drawn[5:].tolist()) == [0, 1, 2, 3, 4]
    uniform = UniformSampler(3, 8, np.random.default_rng(0)).next()
    assert len(uniform) == 3 and set(uniform.tolist()) <= {0, 1, 2}
