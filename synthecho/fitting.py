"""One training loop for every model that is trained and then kept at its best on a validation split.

Its users: the downstream study's models (`synthecho.downstream`: U-Net, ResNet-18, CLIPSeg), the
filter's segmenter (`synthecho.segmenter`) and the filter's view/phase classifiers
(`synthecho.quality.attributes`, a fixed budget without a validation split). A model comes with a
*task*, a small protocol (`Task`):

- `batch_loss(model, data, indices, rng)`: the loss tensor of one batch, the training items `indices`
  of `data` (in [0, size)); the task assembles and augments the batch, drawing from `rng`, the loop's
  numpy Generator (seeded, so a run is reproducible from its seed);
- `validate(model)`: the validation score, higher is better — a float, or a mapping of named values
  whose `select` entry is the score (every value is kept in the history). Called only when the budget
  validates.

`fit` runs a `Budget`: at most `max_steps` optimizer steps, validating every `validate_every` steps and
at the last step; with `patience`, training stops once that many validations in a row brought no
improvement (early stopping). The best weights are loaded back into the model. Every run records the
steps it used and its best step; a run whose best validation is its last one was still improving when
its budget ended, and is recorded as not converged (`converged` False), whatever its score.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from synthecho import profiling
from synthecho.errors import SynthechoError


class Task(Protocol):
    def batch_loss(self, model, data, indices: np.ndarray, rng: np.random.Generator) -> Any: ...

    def validate(self, model) -> float | Mapping[str, float]: ...


@dataclass(frozen=True)
class Budget:
    """How long and how a model trains; the fields every run records next to its result."""

    max_steps: int
    batch_size: int
    learning_rate: float
    validate_every: int | None = None  # None: no validation; the last weights are kept
    patience: int | None = None  # validations without improvement before stopping; None: run max_steps
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    cosine: bool = False  # cosine-annealed learning rate over max_steps
    # epoch: every item once per epoch, in a fresh seeded order each epoch; uniform: with replacement
    sampling: Literal["epoch", "uniform"] = "epoch"

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1:
            raise SynthechoError(f"a training budget needs max_steps and batch_size >= 1, got {self}")
        if self.patience is not None and (self.validate_every is None or self.patience < 1):
            raise SynthechoError(f"patience {self.patience} needs validation (validate_every) and >= 1")


class EpochSampler:
    """Batches of indices; every item is seen once per epoch, in a fresh seeded order each epoch."""

    def __init__(self, size: int, batch_size: int, rng: np.random.Generator):
        self.size, self.batch_size, self.rng = size, batch_size, rng
        self.order, self.cursor = rng.permutation(size), 0

    def next(self) -> np.ndarray:
        batch: list[int] = []
        while len(batch) < self.batch_size:
            if self.cursor == self.size:
                self.order, self.cursor = self.rng.permutation(self.size), 0
            take = self.order[self.cursor : self.cursor + self.batch_size - len(batch)]
            batch.extend(take.tolist())
            self.cursor += len(take)
        return np.asarray(batch)


class UniformSampler:
    """Batches of min(batch_size, size) indices drawn with replacement."""

    def __init__(self, size: int, batch_size: int, rng: np.random.Generator):
        self.size, self.batch_size, self.rng = size, batch_size, rng

    def next(self) -> np.ndarray:
        return self.rng.integers(0, self.size, size=min(self.batch_size, self.size))


@dataclass
class FitResult:
    steps: int  # optimizer steps used (< max_steps when early stopping ended the run)
    max_steps: int
    best_step: int | None  # None without validation
    stopped_early: bool
    converged: bool | None  # False: the best validation was the last one; None without validation
    validation: dict[str, float] | None  # the best validation's values
    history: list[dict] = field(default_factory=list)  # [{"step", <validation values>}]
    losses: list[float] = field(default_factory=list)  # one per step
    seconds: float = 0.0

    def record(self, select: str = "score") -> dict:
        """What a run records (no per-step losses): steps, best step, convergence, score, history."""
        out = asdict(self)
        del out["losses"], out["validation"]
        out["validation_score"] = None if self.validation is None else self.validation[select]
        out["final_loss"] = self.losses[-1] if self.losses else None
        return out


def _optimizer(model, budget: Budget):
    import torch

    if budget.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=budget.learning_rate, weight_decay=budget.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=budget.learning_rate, weight_decay=budget.weight_decay)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=budget.max_steps) if budget.cosine else None
    )
    return opt, schedule


def fit(
    model,
    task: Task,
    data,
    budget: Budget,
    *,
    seed: int,
    size: int | None = None,
    select: str = "score",
    validate_at_start: bool = False,
    progress: bool = True,
    desc: str = "train",
    profile: str = "train",
) -> FitResult:
    """Train `model` on `data` (`size` items, default len(data)) under `budget`; keep the best weights.

    `validate_at_start` validates before the first step (step 0): fine-tuning then never ends below
    where the pretrained model started. Ties keep the earlier step. Profiling sections are named
    `{profile}/data|forward|backward|validation`.
    """
    from tqdm.auto import tqdm

    size = len(data) if size is None else size
    if size == 0:
        raise SynthechoError(f"{desc}: cannot train on an empty set of items")
    rng = np.random.default_rng(seed)
    sampler = (EpochSampler if budget.sampling == "epoch" else UniformSampler)(size, budget.batch_size, rng)
    opt, schedule = _optimizer(model, budget)
    result = FitResult(0, budget.max_steps, None, False, None, None)
    best_state, since_best = None, 0

    def validate(step: int) -> None:
        nonlocal best_state, since_best
        with profiling.section(f"{profile}/validation"):
            model.eval()
            value = task.validate(model)
            values = {select: float(value)} if not isinstance(value, Mapping) else dict(value)
            result.history.append({"step": step, **values})
            if result.validation is None or values[select] > result.validation[select]:
                result.validation, result.best_step, since_best = values, step, 0
                best_state = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
            else:
                since_best += 1

    started = time.perf_counter()
    validating = budget.validate_every is not None
    if validating and validate_at_start:
        validate(0)
    bar = tqdm(range(1, budget.max_steps + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        model.train()
        with profiling.section(f"{profile}/data"):
            indices = sampler.next()
        # The task's batch_loss assembles (and augments) the batch as well: that is counted as forward.
        with profiling.section(f"{profile}/forward"):
            loss = task.batch_loss(model, data, indices, rng)
        with profiling.section(f"{profile}/backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
        result.losses.append(float(loss.detach()))
        result.steps = step
        if validating and (step % budget.validate_every == 0 or step == budget.max_steps):
            validate(step)
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", best=f"{result.validation[select]:.3f}")
            if budget.patience is not None and since_best >= budget.patience and step < budget.max_steps:
                result.stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        result.converged = result.best_step < result.steps
    model.eval()
    result.seconds = round(time.perf_counter() - started, 3)
    return result
