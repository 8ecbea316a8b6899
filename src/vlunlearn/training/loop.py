"""The one training loop: pretraining, the retrain oracle and every unlearning method run here.

The loop knows nothing about data or losses. An *objective* is a callable
``objective(model, step) -> StepOutput``: it fetches the batches of ``step`` from its
own deterministic samplers and returns the loss. The loop owns the optimizer
(AdamW), the schedule (linear warm-up, then cosine), gradient clipping, the
progress bar, periodic training-state checkpoints and exact resumption.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vlunlearn.errors import CheckpointError, TrainingError
from vlunlearn.io import atomic_path

# Scalars that MERU and CLIP exclude from weight decay, besides norms and biases.
_NO_DECAY_NAMES = ("logit_scale", "curv", "visual_alpha", "textual_alpha", "cls_token", "posit_embed")


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
    """

    steps: int
    lr: float
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 0
    cosine: bool = True
    grad_clip: float = 1.0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_logs: dict[str, float]
    history: list[dict[str, float]]
    resumed_from: int = 0

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
        state_path: file for periodic training-state checkpoints (model, optimizer,
            step); required when ``config.checkpoint_every`` > 0 or ``resume``.
        resume: continue from ``state_path`` if it exists. Because batches depend only on
            the step, a resumed run ends with the same weights as an uninterrupted one.
        should_stop: called after each step with the number of steps done; ``True`` ends
            training early (for example when a forget-accuracy target is reached).
    """
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    start = 0
    if resume and state_path is not None and state_path.exists():
        start = _load_state(state_path, model, optimizer, scheduler)
    history: list[dict[str, float]] = []
    logs: dict[str, float] = {}
    steps_done = config.steps
    started = time.perf_counter()
    bar = tqdm(range(start, config.steps), desc=description, disable=not progress, initial=start, total=config.steps)
    for step in bar:
        model.train()
        model.clamp_scalars_()
        output = objective(model, step)
        if not torch.isfinite(output.loss):
            raise TrainingError(f"{description}: the loss became {output.loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        logs = {"step": step + 1, "loss": output.loss.item(), **output.logs, "lr": scheduler.get_last_lr()[0]}
        if (step + 1) % log_every == 0 or step + 1 == config.steps:
            history.append(logs)
            bar.set_postfix(loss=f"{logs['loss']:.3f}")
        if state_path is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            _save_state(state_path, model, optimizer, scheduler, step + 1)
        if should_stop is not None and should_stop(step + 1):
            steps_done = step + 1
            break
    bar.close()
    model.eval()
    return TrainResult(steps_done, time.perf_counter() - started, logs, history, start)


def _save_state(path: Path, model: nn.Module, optimizer, scheduler, step: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    with atomic_path(path) as tmp:
        torch.save({**state, "step": step}, tmp)


def _load_state(path: Path, model: nn.Module, optimizer, scheduler) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["step"])
    except Exception as error:  # any failure here means the state file is unusable
        raise CheckpointError(f"cannot resume from training state {path}: {error}") from error
