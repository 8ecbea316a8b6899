"""The one training loop: pretraining, the retrain oracle and every unlearning method run here.

The loop knows nothing about data or losses. An *objective* is a callable
``objective(model, step) -> StepOutput``: it fetches the batches of ``step`` from its
own deterministic samplers and returns the loss. The loop owns the optimizer
(AdamW), the schedule (linear warm-up, then cosine), gradient clipping, the
progress bar, periodic training-state checkpoints and exact resumption.

Nothing is lost:
- SIGINT or SIGTERM stops training at the next step boundary, saves the training state
  (when a ``state_path`` is given) and raises :class:`~vlunlearn.errors.RunInterrupted`;
  a second signal interrupts at once. ``resume=True`` then ends with the same weights as an
  uninterrupted run, because batches depend only on the step.
- A non-finite loss or gradient norm skips the step, restores the last good state (kept in
  host memory every ``snapshot_every`` steps, by default every 10 steps for models up to 50M
  parameters and every 50 steps above), halves the learning rate for the rest of the run
  and records the fault; a second fault stops the run with a :class:`TrainingError` after
  saving the last good state to ``state_path``.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vlunlearn.errors import CheckpointError, ConfigError, RunInterrupted, TrainingError
from vlunlearn.io import atomic_path
from vlunlearn.training import distributed

SMALL_MODEL_PARAMS = 50_000_000  # default snapshot intervals (OptimConfig.snapshot_every): up to this size,
SNAPSHOT_INTERVAL_SMALL = 10  # ... every this many steps,
SNAPSHOT_INTERVAL_LARGE = 50  # ... and every this many steps above it

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Scalars that MERU and CLIP exclude from weight decay, besides norms and biases.
_NO_DECAY_NAMES = ("logit_scale", "curv", "visual_alpha", "graph_alpha", "textual_alpha", "cls_token", "posit_embed")


@dataclass(frozen=True)
class StepOutput:
    """The loss to minimise and scalar values to log."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    def __call__(self, model: nn.Module, step: int) -> StepOutput: ...


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation recipe.

    Attributes:
        steps: optimizer steps to take.
        lr: peak learning rate of AdamW.
        weight_decay: decoupled weight decay (not applied to norms, biases and scalars).
        betas: AdamW betas; (0.9, 0.98) as in CLIP and MERU.
        warmup_steps: linear warm-up from 0 to ``lr``.
        cosine: decay to 0 by a half cosine after warm-up; otherwise constant.
        grad_clip: maximum gradient norm, 0 to disable.
        checkpoint_every: save the training state every this many steps (0: never).
        precision: ``fp32``, or mixed precision ``bf16`` / ``fp16`` (autocast around the
            objective; ``fp16`` adds dynamic loss scaling). The Lorentz operations always
            run in float32 (see :mod:`vlunlearn.geometry.lorentz`); the weights stay float32.
        snapshot_every: keep a copy of the model and optimizer state in host (CPU) memory
            every this many steps, restored after a non-finite loss (0: no recovery, a fault
            stops the run). ``None`` (default) scales with the model: every
            :data:`SNAPSHOT_INTERVAL_SMALL` steps up to :data:`SMALL_MODEL_PARAMS` parameters (a
            copy of the tiny model and its AdamW moments, 89 MB, takes ~12% of a 64-pair step on
            CPU: 1.2% when taken every 10 steps), every :data:`SNAPSHOT_INTERVAL_LARGE` above (a
            ViT-L's copy is ~5 GB, moved from the accelerator to the host). A fault then repeats at
            most that many steps. On an accelerator the copy never takes accelerator memory.
        freeze_norm_statistics: keep batch-norm running statistics as they are (batch-norm
            layers stay in eval mode): unlearning batches show one concept, and a ResNet
            tower's statistics would drift toward it.
    """

    steps: int
    lr: float
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 0
    cosine: bool = True
    grad_clip: float = 1.0
    checkpoint_every: int = 0
    precision: str = "fp32"
    snapshot_every: int | None = None
    freeze_norm_statistics: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def checkpoint_interval(steps: int, every: int | None = None) -> int:
    """``every``, or by default a tenth of a run of ``steps`` (at least 1): how often unlearning
    and retraining runs save their training state."""
    return every or max(1, steps // 10)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_logs: dict[str, float]
    history: list[dict[str, float]]
    resumed_from: int = 0
    faults: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed matrices and undecayed norms, biases and scalars."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in _NO_DECAY_NAMES:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(
    model: nn.Module,
    objective: Objective,
    config: OptimConfig,
    *,
    state_path: Path | None = None,
    resume: bool = False,
    description: str = "train",
    progress: bool = True,
    log_every: int = 10,
    should_stop: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Minimise ``objective`` over ``model`` in place.

    Args:
        state_path: file for training-state checkpoints (model, optimizer, step), written
            every ``config.checkpoint_every`` steps, on SIGINT/SIGTERM and before stopping on
            a repeated numerical fault; needed for ``resume``.
        resume: continue from ``state_path`` if it exists. Because batches depend only on
            the step, a resumed run ends with the same weights as an uninterrupted one.
        should_stop: called after each step with the number of steps done; ``True`` ends
            training early (for example when a forget-accuracy target is reached).

    Raises:
        RunInterrupted: on SIGINT or SIGTERM (the state is saved first when possible).
        TrainingError: on a second non-finite loss or gradient.
    """
    lr_scale = [1.0]
    device_type = next(model.parameters()).device.type
    # the fused kernel updates the (mostly untouched) token-embedding rows ~4x faster on CPU
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas,
        fused=device_type in ("cpu", "cuda"),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_scale[0] * config.lr_factor(s))
    half = PRECISIONS[config.precision]
    # fp16 loss scaling starts at 2**10, not torch's 2**16: unlearning runs are tens of steps, and
    # each overflow at the start skips a step while the scale comes down
    scaler = torch.amp.GradScaler(device_type, init_scale=2.0**10, enabled=half is torch.float16)
    start = 0
    if resume and state_path is not None and state_path.exists():
        start, lr_scale[0] = _load_state(state_path, model, optimizer, scheduler, scaler)
    history: list[dict[str, float]] = []
    faults: list[dict[str, float]] = []
    logs: dict[str, float] = {}
    snapshot_every = snapshot_interval(config, model)
    snapshot = _snapshot(model, optimizer, scheduler, start, lr_scale[0]) if snapshot_every else None
    steps_done = config.steps
    started = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start, desc=description, disable=not progress or not distributed.is_main())
    step = start
    with _stop_requests() as pending_signal:
        while step < config.steps:
            model.train()
            if config.freeze_norm_statistics:
                for module in model.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
            model.clamp_scalars_()
            with torch.autocast(device_type, dtype=half, enabled=half is not None):
                output = objective(model, step)
            optimizer.zero_grad(set_to_none=True)
            grad_norm = math.nan
            if torch.isfinite(output.loss):
                scaler.scale(output.loss).backward()
                distributed.average_gradients(model)
                scaler.unscale_(optimizer)
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf).item()
            # with fp16 an infinite gradient is a loss-scale overflow: the scaler skips the step itself
            if not (math.isfinite(output.loss.item()) and (math.isfinite(grad_norm) or scaler.is_enabled())):
                faults.append({"step": step, "loss": output.loss.item(), "grad_norm": grad_norm})
                if len(faults) > 1 or snapshot is None:
                    _stop_on_fault(description, faults, snapshot, state_path, model, optimizer, scheduler, scaler)
                step = _restore(snapshot, model, optimizer, scheduler)
                history = [entry for entry in history if entry["step"] <= step]
                lr_scale[0] *= 0.5
                for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                    group["lr"] = base * lr_scale[0] * config.lr_factor(step)
                faults[-1]["restored_step"] = step
                warnings.warn(
                    f"{description}: non-finite loss or gradient at step {faults[-1]['step']}; restored the state "
                    f"of step {step} and halved the learning rate (a second fault stops the run)",
                    stacklevel=2,
                )
                bar.n = step
                continue
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            bar.update(1)
            logs = {"step": step, "loss": output.loss.item(), **output.logs, "lr": scheduler.get_last_lr()[0]}
            if step % log_every == 0 or step == config.steps:
                history.append(logs)
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
            if snapshot_every and step % snapshot_every == 0:
                snapshot = _snapshot(model, optimizer, scheduler, step, lr_scale[0])
            if state_path is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                _save_state(state_path, model, optimizer, scheduler, scaler, step, lr_scale[0])
            if pending_signal() is not None:
                bar.close()
                where = "no training state is kept"
                if state_path is not None:
                    _save_state(state_path, model, optimizer, scheduler, scaler, step, lr_scale[0])
                    where = f"the training state is saved in {state_path}; rerun the same command with --resume"
                raise RunInterrupted(f"{description}: stopped by {pending_signal()} after step {step}; {where}")
            if should_stop is not None and should_stop(step):
                steps_done = step
                break
    bar.close()
    model.eval()
    return TrainResult(steps_done, time.perf_counter() - started, logs, history, start, faults)


@contextmanager
def _stop_requests() -> Iterator[Callable[[], str | None]]:
    """While active, SIGINT and SIGTERM ask training to stop at the next step boundary; a
    second signal raises ``KeyboardInterrupt`` at once. Yields a function that returns the
    name of the first signal received, or ``None``. Outside the main thread, does nothing."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def request_stop(signum, frame) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_on_fault(description, faults, snapshot, state_path, model, optimizer, scheduler, scaler) -> None:
    steps = ", ".join(str(int(f["step"])) for f in faults)
    message = f"{description}: the loss or its gradient was not finite (at step {steps})"
    if snapshot is not None and state_path is not None:
        _restore(snapshot, model, optimizer, scheduler)
        _save_state(state_path, model, optimizer, scheduler, scaler, snapshot["step"], snapshot["lr_scale"])
        message += f"; the last good state (step {snapshot['step']}) is saved in {state_path}"
    raise TrainingError(message + "; lower the learning rate (--set lr=...) and rerun")


def snapshot_interval(config: OptimConfig, model: nn.Module) -> int:
    """Steps between two recovery snapshots: ``config.snapshot_every``, or when ``None``
    :data:`SNAPSHOT_INTERVAL_SMALL` for a model of at most :data:`SMALL_MODEL_PARAMS` parameters,
    else :data:`SNAPSHOT_INTERVAL_LARGE`."""
    if config.snapshot_every is not None:
        return config.snapshot_every
    small = sum(p.numel() for p in model.parameters()) <= SMALL_MODEL_PARAMS
    return SNAPSHOT_INTERVAL_SMALL if small else SNAPSHOT_INTERVAL_LARGE


def _to_host(value):
    """Tensors of a (nested) state dict copied to CPU memory; other values deep-copied."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    return copy.deepcopy(value)


def _snapshot(model: nn.Module, optimizer, scheduler, step: int, lr_scale: float) -> dict:
    """The state to restore after a fault, in host memory (load_state_dict moves it back)."""
    return {
        "model": _to_host(model.state_dict()),
        "optimizer": _to_host(optimizer.state_dict()),
        "scheduler": copy.deepcopy(scheduler.state_dict()),
        "step": step,
        "lr_scale": lr_scale,
    }


def _restore(snapshot: dict, model: nn.Module, optimizer, scheduler) -> int:
    model.load_state_dict(snapshot["model"])
    optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
    scheduler.load_state_dict(copy.deepcopy(snapshot["scheduler"]))
    return snapshot["step"]


def _save_state(path: Path, model: nn.Module, optimizer, scheduler, scaler, step: int, lr_scale: float) -> None:
    if not distributed.is_main():
        return
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)  # a run folder appears only once training has begun
    with atomic_path(path) as tmp:
        torch.save({**state, "step": step, "lr_scale": lr_scale}, tmp)


def _load_state(path: Path, model: nn.Module, optimizer, scheduler, scaler) -> tuple[int, float]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        return int(state["step"]), float(state.get("lr_scale", 1.0))
    except Exception as error:  # any failure here means the state file is unusable
        raise CheckpointError(f"cannot resume from training state {path}: {error}") from error
