"""Training under several processes, the learning-rate schedule, and the thread count.

The multi-process tests launch real processes over gloo (DDP on CPU) with `accelerate launch --multi_gpu
--num_processes 2` and no GPU visible: accelerate 1.x turns `--cpu --num_processes 2` into ONE process
(it runs several CPU processes only through mpirun), which would prove nothing. What they check:

- every process draws its own frames and noise, and 2 processes draw exactly the micro-batches of one
  process with twice the accumulation (same global batch), so they train the same model;
- `python -m synthecho train` under the launcher: only the main process writes anything into the run
  (an audit hook in every launched interpreter records each write, and the main process's record is the
  positive control), a killed 2-process run resumes, and its generator equals a single-process run at
  twice the accumulation within TOLERANCE (float summation order is the only difference; measured 0.0
  here: with two micro-batches a/2 + b/2 and (a + b)/2 round alike);
- a checkpoint written by 2 processes resumes in 1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from synthecho.recipe import load_recipe
from synthecho.stages import read_stage_marker, run_stage
from synthecho.training import list_checkpoints, train_loop

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # max |weight difference|, 2-process run vs 1 process with twice the accumulation
RECIPE = """
name: tiny-dist
seed: 0
source: {kind: phantom, phantom: {patients: 6, size: [48, 40]}}
prepare: {resolution: 16}
generator: {kind: sdm, variant: concat, channels: [8, 16], attention: [false, true], num_head_channels: 8,
            condition_dropout: 0.5}
train: {steps: 12, batch_size: 2, checkpoint_every: 2, grid_sampler_steps: 2}
segmenter: {channels: [4, 8], strides: [2], num_res_units: 0, steps: 2, batch_size: 2, validate_every: 2}
"""
AUDIT = """
import os, sys
_path = os.environ.get("SYNTHECHO_TEST_AUDIT")
if _path:
    _root = os.environ["SYNTHECHO_TEST_AUDIT_ROOT"]
    _log = open(f"{_path}.{os.environ.get('RANK', 'launcher')}", "a", buffering=1)
    _WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _EVENTS = ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.rename", "os.truncate", "os.chmod")

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITES)
            paths = (path,) if writes else ()
        elif event in _EVENTS:
            paths = args[:2] if event == "os.rename" else args[:1]
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(path))
                if path.startswith(_root):
                    _log.write(f"{event} {path}\\n")

    sys.addaudithook(_hook)
"""
LOOP_SCRIPT = """
import json, os, sys
import numpy as np, torch
from synthecho.training import train_loop

out, accumulation = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
draws = []

def sample_batch(rng):
    x = rng.normal(size=(3, 4)).astype(np.float32)
    draws.append({"frames": x.tolist()})
    return {"x": torch.from_numpy(x)}

def loss_fn(model, batch):
    noise = torch.randn(batch["x"].shape[0], 1)
    draws[-1]["noise"] = noise[:, 0].tolist()
    return ((model(batch["x"]) - noise) ** 2).mean()

info = train_loop(model, loss_fn, sample_batch, steps=3, checkpoint_dir=os.path.join(out, "checkpoints"),
                  learning_rate=1e-2, gradient_accumulation_steps=accumulation, seed=7, progress=False)
rank = os.environ.get("RANK", "0")
weights = [p.detach().flatten().tolist() for p in model.parameters()]
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"draws": draws, "losses": info["losses"], "processes": info["processes"],
               "global_batch_size": info["global_batch_size"], "weights": weights}, f)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(tmp_path: Path, audit_root: Path | None = None) -> dict:
    """Environment of launched processes: no GPU, one thread, and the write audit when asked."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(AUDIT)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), str(REPO)])
    if audit_root is not None:
        env["SYNTHECHO_TEST_AUDIT"] = str(tmp_path / "audit")
        env["SYNTHECHO_TEST_AUDIT_ROOT"] = str(audit_root.resolve())
    return env


def launch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *args]  # fmt: skip


def kill_with_workers(pid: int) -> None:
    import psutil

    launcher = psutil.Process(pid)
    for process in [*launcher.children(recursive=True), launcher]:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(launcher.children(recursive=True), timeout=30)


def audited_writes(tmp_path: Path, rank: str) -> list[str]:
    path = tmp_path / f"audit.{rank}"
    return path.read_text().splitlines() if path.is_file() else []


@pytest.fixture
def torch_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


# --- one process: the seeds it always used; the schedule ----------------------------------------------


def tiny_loop(tmp_path: Path, steps: int, **settings) -> tuple[torch.nn.Module, dict, list]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    states = []

    def sample_batch(rng):
        states.append(rng.bit_generator.state)
        return torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))

    def loss_fn(model, x):
        return ((model(x) - torch.randn(len(x), 1)) ** 2).mean()

    settings = {"checkpoint_every": 3, "learning_rate": 0.05, "seed": 3, "progress": False, **settings}
    info = train_loop(model, loss_fn, sample_batch, steps=steps, checkpoint_dir=tmp_path, **settings)
    return model, info, states


def test_a_single_process_draws_what_it_always_drew(tmp_path):
    _, info, states = tiny_loop(tmp_path, 2, gradient_accumulation_steps=2)
    expected = [
        np.random.default_rng([3, step, micro]).bit_generator.state for step in (0, 1) for micro in (0, 1)
    ]
    assert states == expected  # the seeds before several processes existed: committed corpora reproduce
    assert info["processes"] == 1 and info["global_batch_size"] == 8 and info["main_process"]


def test_the_learning_rate_follows_diffusers_schedule_and_resumes_mid_curve(tmp_path):
    from diffusers.optimization import get_scheduler

    schedule = {"lr_scheduler": "linear", "lr_warmup_steps": 2}
    straight, info, _ = tiny_loop(tmp_path / "straight", 6, **schedule)
    tiny_loop(tmp_path / "resumed", 3, **schedule)  # a shorter run: its last checkpoint is step 3
    resumed, resumed_info, _ = tiny_loop(tmp_path / "resumed", 6, **schedule)
    assert resumed_info["start_step"] == 3 and resumed_info["losses"] == info["losses"]
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters(), strict=True))

    def saved_rate(folder: Path) -> float:
        return torch.load(folder / "optimizer.pt", weights_only=True)["param_groups"][0]["lr"]

    reference = torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), lr=0.05)
    curve = get_scheduler("linear", reference, num_warmup_steps=2, num_training_steps=6)
    for _ in range(3):
        reference.step()
        curve.step()
    assert saved_rate(tmp_path / "straight" / "step-3") == reference.param_groups[0]["lr"] != 0.05
    assert saved_rate(tmp_path / "straight" / "step-6") == 0.0  # linear decay ends at 0 at train.steps

    tiny_loop(tmp_path / "constant", 3)  # the default keeps the recipe's rate exactly
    assert saved_rate(tmp_path / "constant" / "step-3") == 0.05


# --- two processes ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_draw_their_own_micro_batches_and_train_the_model_of_twice_the_accumulation(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(LOOP_SCRIPT))
    env = launch_env(tmp_path)
    for name, command in {
        "two": launch_command(str(script), str(tmp_path / "two"), "1"),
        "one": [sys.executable, str(script), str(tmp_path / "one"), "2"],
    }.items():
        (tmp_path / name).mkdir()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert ranks[0]["processes"] == 2 and ranks[0]["global_batch_size"] == one["global_batch_size"] == 6
    for step in range(3):
        zero, first = ranks[0]["draws"][step], ranks[1]["draws"][step]
        assert zero["frames"] != first["frames"] and zero["noise"] != first["noise"]  # no repeated batch
        # process r's micro-batch is micro-batch r of the single process's accumulation
        assert [zero, first] == one["draws"][2 * step : 2 * step + 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP keeps the replicas identical
    two_weights, one_weights = np.concatenate(ranks[0]["weights"]), np.concatenate(one["weights"])
    difference = float(np.abs(two_weights - one_weights).max())
    assert difference <= TOLERANCE
    assert np.allclose(ranks[0]["losses"], one["losses"], rtol=1e-6, atol=0)  # the global batch's loss


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dist")
    recipe_path = root / "tiny.yaml"
    recipe_path.write_text(RECIPE)
    run_stage("prepare", load_recipe(recipe_path), root / "prepared", progress=False)
    return recipe_path, root / "prepared"


def generator_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next((run / "generator").rglob("diffusion_pytorch_model.safetensors"))))


@pytest.mark.slow
def test_cli_train_under_two_processes_writes_once_resumes_after_a_kill_and_matches_one_process(
    prepared, tmp_path, torch_threads
):
    recipe_path, source = prepared
    run = tmp_path / "run"
    shutil.copytree(source, run)
    env = launch_env(tmp_path, audit_root=run)
    train = launch_command("-m", "synthecho", "train", "--recipe", str(recipe_path), "--run-dir", str(run),
                           "--threads", "1")  # fmt: skip

    # 1. Kill the 2-process run (SIGKILL, every process: torchrun starts each worker in its own session,
    #    so the launcher's process group alone would leave them running) once a checkpoint exists.
    process = subprocess.Popen(train, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not list((run / "generator").rglob("step-*/state.json")):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        kill_with_workers(process.pid)
    finally:
        process.kill()
        process.wait()
    checkpoints = next(p.parent.parent for p in (run / "generator").rglob("step-*/state.json"))
    saved = list_checkpoints(checkpoints)[-1][0]
    assert 0 < saved < 12 and read_stage_marker(run, "train") is None

    # 2. A checkpoint of 2 processes resumes in 1 (a copy: the global batch halves from there on).
    alone = tmp_path / "alone"
    shutil.copytree(run, alone)
    info = run_stage("train", load_recipe(recipe_path, ["threads=1"]), alone, progress=False)
    assert info["generator"]["start_step"] >= saved and info["generator"]["processes"] == 1

    # 3. The 2-process run resumes and finishes; only the main process wrote into the run folder.
    done = subprocess.run(train, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    marker = read_stage_marker(run, "train")
    generator = marker["info"]["generator"]
    assert generator["start_step"] >= saved and generator["processes"] == 2
    assert generator["global_batch_size"] == 4 and len(list_checkpoints(checkpoints)) >= 1
    assert audited_writes(tmp_path, "0"), "positive control: the audit saw the main process write"
    assert audited_writes(tmp_path, "1") == []
    assert audited_writes(tmp_path, "launcher") == []

    # 4. Equal to one process at twice the accumulation (the same global batch of 4 frames).
    single = tmp_path / "single"
    shutil.copytree(source, single)
    overrides = ["train.gradient_accumulation_steps=2", "threads=1"]
    run_stage("train", load_recipe(recipe_path, overrides), single, progress=False)
    two, one = generator_weights(run), generator_weights(single)
    difference = max(float((two[name] - one[name]).abs().max()) for name in one)
    assert difference <= TOLERANCE, difference
    manifest = json.loads((single / "manifest.json").read_text())
    assert manifest["generator"]["train"]["global_batch_size"] == 4
    assert manifest["environment"]["torch_threads"] == 1  # --threads / the recipe key reached torch
