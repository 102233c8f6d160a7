"""The training loop every generator shares: accelerate, AdamW, EMA, atomic checkpoints, resume.

A generator supplies its model, a `loss_fn(model, batch) -> scalar loss` and a `sample_batch(rng) -> batch`
(CPU tensors in a dict/tuple; they are moved to the training device here). `train_loop` does the rest:

- one optimizer step = `gradient_accumulation_steps` micro-batches, through `accelerate.Accelerator`
  (device placement, mixed precision, accumulation), AdamW, gradient clipping at norm 1;
- an exponential moving average (EMA) of the trained weights; on return the model HOLDS the EMA weights,
  so the caller saves it as is;
- a checkpoint every `checkpoint_every` steps (and at the last step) in `checkpoint_dir/step-{n}/`:
  model, EMA and optimizer state, the loss history and the step. It is written into a hidden temporary
  folder and renamed into place, so a crash never leaves a half-written checkpoint; only the newest
  `keep_checkpoints` are kept;
- resume: a rerun continues from the newest complete checkpoint instead of step 0;
- a learning-rate schedule (`lr_scheduler`: constant, linear or cosine decay after `lr_warmup_steps` of
  linear warm-up), diffusers' `get_scheduler`, stepped once per optimizer step.

Randomness: every micro-batch draws its data and its torch randomness (noise, timesteps, dropout) from
generators seeded by (seed, step, micro-batch). The random state at step n is therefore a function of the
seed and n alone, which is what makes a resumed run identical to an uninterrupted one (on CPU) without
having to save and restore RNG states.

Several processes (`accelerate launch`, `torchrun`): each optimizer step averages the gradients of
`gradient_accumulation_steps` x `num_processes` micro-batches (DDP). Micro-batch `micro` of process `rank`
is global micro-batch `micro * num_processes + rank`, and that global index seeds it: every process draws
different frames and noise, a single process (rank 0 of 1) draws exactly what it always drew, and a run
of N processes draws the same samples as one process with N times the accumulation (the same global
batch), so it trains the same model up to float summation order. Only the main process writes
checkpoints; every process resumes from them, whatever the number of processes that wrote them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthecho import profiling
from synthecho.errors import SynthechoError

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
STATE_FILE = "state.json"  # written last inside a checkpoint; its presence marks it complete
FINAL_LOSS_WINDOW = 10  # diffusion losses are noisy per step; report the mean of the last few


class Ema:
    """EMA of the trainable parameters, kept in float32 on the parameters' device.

    The decay warms up as min(decay, (1 + t) / (10 + t)) (as diffusers' EMAModel without power warmup):
    with a fixed 0.999 a 300-step run would still be three quarters random initialisation.
    """

    def __init__(self, named_parameters: list[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in named_parameters}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, named_parameters: list[tuple[str, torch.nn.Parameter]]) -> None:
        weight = 1.0 - self.current_decay()
        for name, param in named_parameters:
            self.shadow[name].lerp_(param.detach().float(), weight)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        parameters = dict(model.named_parameters())
        for name, value in self.shadow.items():
            parameters[name].copy_(value.to(parameters[name].dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.contiguous() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise SynthechoError(
                f"EMA checkpoint lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}"
            )
        for name in self.shadow:
            self.shadow[name].copy_(state[name])
        self.updates = updates


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _rows(batch) -> int | None:
    """Leading dimension of a batch (a tensor, or the first tensor of a dict / tuple)."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()), None)
    elif isinstance(batch, list | tuple):
        batch = batch[0] if batch else None
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.ndim else None


def list_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those holding state.json), oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    found = []
    if checkpoint_dir.is_dir():
        for entry in checkpoint_dir.iterdir():
            match = CHECKPOINT_PATTERN.match(entry.name)
            if match and (entry / STATE_FILE).is_file():
                found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1][1] if checkpoints else None


def _save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    model: torch.nn.Module,
    ema: Ema,
    optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    from safetensors.torch import save_file, save_model

    # 1. Write everything into a hidden temporary folder ...
    final = checkpoint_dir / f"step-{step}"
    tmp = checkpoint_dir / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # save_model copes with tied weights
    save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
    # 2. ... then rename it into place in one step (a leftover with the same name is an older attempt).
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    # 3. Keep only the newest `keep` checkpoints.
    for _, old in list_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _clear_stale(checkpoint_dir: Path, fingerprint: str) -> None:
    """Remove half-written temp folders, and checkpoints of a different model/data (fingerprint)."""
    if not checkpoint_dir.is_dir():
        return
    for entry in checkpoint_dir.iterdir():
        if entry.name.startswith(".step-") and entry.name.endswith(".tmp"):
            shutil.rmtree(entry, ignore_errors=True)
    for _, path in list_checkpoints(checkpoint_dir):
        saved = json.loads((path / STATE_FILE).read_text(encoding="utf-8")).get("fingerprint", "")
        if saved != fingerprint:
            log.warning("checkpoint %s was made for another model or data set; starting from step 0", path)
            shutil.rmtree(path, ignore_errors=True)


def recipe_loop_settings(recipe, progress: bool) -> dict[str, Any]:
    """The `train_loop` keywords every generator takes from the recipe's `train` section and seed."""
    t = recipe.train
    return {
        "ema_decay": t.ema_decay,
        "checkpoint_every": t.checkpoint_every,
        "mixed_precision": t.mixed_precision,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "lr_scheduler": t.lr_scheduler,
        "lr_warmup_steps": t.lr_warmup_steps,
        "seed": recipe.seed,
        "progress": progress,
    }


def process_slot() -> tuple[int, int]:
    """(process index, number of processes): accelerate's under `accelerate launch`/`torchrun`, else
    (0, 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # cpu=True where there is no GPU (or with `accelerate launch --cpu`): otherwise accelerate sees no
    # distributed setup and every rank would believe it is the only one.
    cpu = not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    state = PartialState(cpu=cpu)
    return state.process_index, state.num_processes


def is_main_process() -> bool:
    """False on the data-parallel peers of a multi-process run: they train alongside, the main one saves."""
    return process_slot()[0] == 0


def make_lr_scheduler(optimizer, name: str, warmup_steps: int, steps: int, start_step: int = 0):
    """diffusers' schedule `name` (constant / linear / cosine, after `warmup_steps` of linear warm-up),
    positioned at `start_step` (a resumed run continues the curve instead of restarting it)."""
    from diffusers.optimization import get_scheduler

    if name == "constant" and warmup_steps > 0:
        name = "constant_with_warmup"
    for group in optimizer.param_groups:
        # The schedule multiplies the recipe's rate; a resumed optimizer holds the decayed one.
        group["initial_lr"] = group.get("initial_lr", group["lr"])
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=steps,
        last_epoch=start_step - 1,
    )


def train_loop(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    sample_batch: Callable[[np.random.Generator], Any],
    *,
    steps: int,
    checkpoint_dir: str | Path,
    learning_rate: float,
    ema_decay: float = 0.999,
    checkpoint_every: int = 100,
    mixed_precision: str = "no",
    gradient_accumulation_steps: int = 1,
    lr_scheduler: str = "constant",
    lr_warmup_steps: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    fingerprint: str = "",
    keep_checkpoints: int = 2,
    progress: bool = True,
    description: str = "train",
) -> dict[str, Any]:
    """Train `model` for `steps` optimizer steps (resuming from `checkpoint_dir`); on return it holds the EMA.

    `fingerprint` identifies the model configuration and data: checkpoints saved under another fingerprint
    are deleted rather than resumed. Returns {steps, start_step, seconds, seconds_per_step, final_loss,
    losses, device, processes, global_batch_size, main_process}; `seconds` includes the time spent before
    an interruption, up to its checkpoint. Under several processes the losses are the mean over processes
    and only the main process (`main_process` True) should save what the model became.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import send_to_device
    from tqdm.auto import tqdm

    checkpoint_dir = Path(checkpoint_dir)

    # 1. Accelerator, optimizer, EMA. The model's initial weights are the caller's (seeded by it).
    process_slot()  # under a launcher without GPUs: the distributed CPU state, before accelerate picks none
    accelerator = Accelerator(
        mixed_precision=mixed_precision, gradient_accumulation_steps=gradient_accumulation_steps
    )
    processes, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    try:
        if main:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            _clear_stale(checkpoint_dir, fingerprint)
        accelerator.wait_for_everyone()  # nobody resumes from a checkpoint the main process is deleting
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise SynthechoError("train_loop: the model has no trainable parameters")
        optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
        model, optimizer = accelerator.prepare(model, optimizer)
        unwrapped = accelerator.unwrap_model(model)
        named_trainable = [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]
        ema = Ema(named_trainable, ema_decay)

        # 2. Resume from the newest complete checkpoint.
        start_step, losses, previous_seconds = 0, [], 0.0
        resume_from = latest_checkpoint(checkpoint_dir)
        if resume_from is not None:
            from safetensors.torch import load_file, load_model

            state = json.loads((resume_from / STATE_FILE).read_text(encoding="utf-8"))
            if state["step"] > steps:
                raise SynthechoError(
                    f"{resume_from} is at step {state['step']} but train.steps is {steps}: delete "
                    f"{checkpoint_dir} (or rerun the stage with --force) to train a shorter schedule."
                )
            # "cpu", not the "cpu:0" a CPU process of several gets: neither loader restores that name
            device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
            load_model(unwrapped, str(resume_from / "model.safetensors"), device=device)
            ema.load_state_dict(load_file(str(resume_from / "ema.safetensors")), state["ema_updates"])
            optimizer.load_state_dict(
                torch.load(resume_from / "optimizer.pt", map_location=device, weights_only=True)
            )
            start_step, losses = state["step"], list(state["losses"])
            previous_seconds = float(state["seconds"])
            log.info("resuming %s from %s (step %d of %d)", description, resume_from, start_step, steps)
            if state.get("processes", 1) != processes:
                log.warning(
                    "%s was trained by %d process(es) and resumes on %d: the global batch (batch x "
                    "accumulation x processes) changes from step %d on",
                    resume_from, state.get("processes", 1), processes, start_step,
                )  # fmt: skip
        schedule = make_lr_scheduler(optimizer, lr_scheduler, lr_warmup_steps, steps, start_step)

        def checkpoint(step: int, seconds: float) -> None:
            state = {
                "step": step,
                "steps_requested": steps,
                "ema_updates": ema.updates,
                "losses": losses,
                "seconds": seconds,
                "seed": seed,
                "fingerprint": fingerprint,
            }
            if processes > 1:  # recorded only where it is news: single-process checkpoints stay as they were
                state["processes"] = processes
            if main:  # the other processes hold the same weights (DDP): one writer
                with profiling.section("generator/checkpoint"):
                    _save_checkpoint(checkpoint_dir, step, unwrapped, ema, optimizer, state, keep_checkpoints)

        # 3. The loop: per-(seed, step, global micro-batch) randomness, so a resumed run repeats the same
        #    draws and every process draws its own (one process: global micro-batch = micro-batch).
        model.train()
        started = time.perf_counter()
        bar = tqdm(
            total=steps, initial=start_step, desc=description, disable=not (progress and main), unit="step"
        )
        last_saved = start_step if resume_from is not None else -1
        rows = None  # frames per micro-batch, read off the first batch (for the global batch size)
        for step in range(start_step, steps):
            step_loss = 0.0
            for micro in range(gradient_accumulation_steps):
                drawn = micro * processes + rank
                rng = np.random.default_rng([seed, step, drawn])
                torch.manual_seed(_derived_seed(seed, step, drawn, 1))
                with profiling.section("generator/data"):
                    batch = send_to_device(sample_batch(rng), accelerator.device)
                rows = rows or _rows(batch)
                with accelerator.accumulate(model):
                    with profiling.section("generator/forward"):
                        loss = loss_fn(model, batch)
                    with profiling.section("generator/backward"):
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and max_grad_norm is not None:
                            accelerator.clip_grad_norm_(trainable, max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                step_loss += float(loss.detach()) / gradient_accumulation_steps
            schedule.step()
            if processes > 1:  # every process logs (and checks) the loss of the whole global batch
                local = torch.tensor(step_loss, dtype=torch.float64, device=accelerator.device)
                step_loss = float(accelerator.reduce(local, reduction="mean"))
            if not np.isfinite(step_loss):
                raise SynthechoError(
                    f"{description}: loss became {step_loss} at step {step + 1}; lower train.learning_rate "
                    f"or use mixed_precision 'no'/'bf16' instead of 'fp16'."
                )
            with profiling.section("generator/ema"):
                ema.update(named_trainable)
            losses.append(step_loss)
            done = step + 1
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", s_per_step=f"{elapsed / (done - start_step):.3f}")
            if done % checkpoint_every == 0 or done == steps:
                checkpoint(done, previous_seconds + elapsed)
                last_saved = done
        bar.close()
        session_seconds = time.perf_counter() - started
        if last_saved != steps:  # e.g. steps == 0 requested with no checkpoint: nothing to resume later
            checkpoint(steps, previous_seconds + session_seconds)
        accelerator.wait_for_everyone()  # the final checkpoint is complete before any process moves on

        # 4. Hand the EMA weights back in the model itself (without accelerate's autocast forward wrapper).
        unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        ema.copy_to(unwrapped)
        unwrapped.eval()
        seconds = previous_seconds + session_seconds
        trained = steps - start_step
        return {
            "steps": steps,
            "start_step": start_step,
            "seconds": round(seconds, 3),
            # s/step of this session (what a user waits for); 0 steps run -> the whole-run average
            "seconds_per_step": round(session_seconds / trained if trained else seconds / max(steps, 1), 4),
            "final_loss": float(np.mean(losses[-FINAL_LOSS_WINDOW:])) if losses else None,
            "losses": losses,
            "device": str(accelerator.device),
            "processes": processes,
            "global_batch_size": rows * gradient_accumulation_steps * processes if rows else None,
            "main_process": main,
        }
    finally:
        accelerator.free_memory()
        # The accelerate state is a process-wide singleton that refuses a different mixed_precision later;
        # a single-process run must let the next training (segmenter, another generator) choose its own.
        if accelerator.num_processes == 1:
            AcceleratorState._reset_state()
