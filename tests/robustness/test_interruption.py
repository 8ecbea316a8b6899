"""A run killed at any point (SIGKILL, SIGTERM) continues with ``--resume`` and ends with the same
model as an uninterrupted run with the same seed; the input checkpoint is never modified."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.robustness.conftest import snapshot
from vlunlearn.cli import main
from vlunlearn.models import load_model

# 12 steps with a training state after each (a tenth of the run, at least 1): the kill lands
# mid-run, and the resumed run must pick up the batch streams and optimizer where they stopped.
STEPS = 12
RUN = ["--data", "digits", "--forget", "seven", "--set", f"steps={STEPS}", "--set", "retain_batch_size=16",
       "--set", "forget_batch_size=8", "--quiet"]


def _command(workspace: Path, method: str, out: Path, *extra: str) -> list[str]:
    return ["unlearn", "--checkpoint", str(workspace / "meru"), "--method", method, *RUN, "--out", str(out), *extra]


def _start(arguments: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "vlunlearn", *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_model(folder / "model").state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(workspace, tmp_path_factory) -> dict:
    """Uninterrupted runs of each method used below."""
    runs = {}
    for method in ("ac", "multidelete"):
        out = tmp_path_factory.mktemp("reference") / method
        assert main(_command(workspace, method, out)) == 0
        runs[method] = _weights(out)
    return runs


@pytest.mark.parametrize("method", ["ac", "multidelete"])
def test_a_killed_run_resumes_to_the_same_model(method, workspace, reference, tmp_path):
    before = snapshot(workspace)
    out = tmp_path / "run"
    process = _start(_command(workspace, method, out))
    _wait_for(out / "train_state.pt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    saved_step = torch.load(out / "train_state.pt", weights_only=True)["step"]
    assert 0 < saved_step < STEPS
    # without --resume the half-done folder is refused; with it the run continues
    assert main(_command(workspace, method, out)) == 2
    assert main(_command(workspace, method, out, "--resume")) == 0
    assert _same(_weights(out), reference[method])
    assert not (out / "train_state.pt").exists()  # the finished run keeps only its results
    assert snapshot(workspace) == before


def test_sigterm_saves_the_state_and_says_how_to_resume(workspace, reference, tmp_path):
    out = tmp_path / "run"
    process = _start(_command(workspace, "ac", out))
    _wait_for(out / "train_state.pt", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped by SIGTERM after step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert main(_command(workspace, "ac", out, "--resume")) == 0
    assert _same(_weights(out), reference["ac"])
