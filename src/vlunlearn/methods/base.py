"""What every unlearning method shares: its config, its context, the registry.

A method is a loss over one retain batch B_r and one forget batch B_f per step
(DESIGN §4). It runs inside the shared training loop through
:class:`UnlearningObjective`, and sees the geometry only through
``model.geometry``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from vlunlearn.errors import ConfigError
from vlunlearn.training.batches import PairBatch, PairSampler, TokenCache, step_generator
from vlunlearn.training.distributed import data_parallel
from vlunlearn.training.loop import StepOutput


@dataclass(frozen=True)
class MethodConfig:
    """Budget and optimisation shared by every method (a method's config extends it).

    Attributes:
        steps: optimizer steps; each sees one retain and one forget batch. 25 steps keep
            every method under 5% of the retrain oracle's wall time on the built-in benchmark.
        lr: AdamW learning rate, constant after warm-up (short runs gain nothing from decay);
            2e-4, a tenth of the pretraining peak, forgets within the budget without
            disturbing the retained classes (chosen on built-in Fashion-MNIST).
        retain_batch_size: pairs of D_r per step.
        forget_batch_size: pairs of D_f per step (capped at |D_f|).
        weight_decay: 0 so that unlearning changes only what the loss asks for.
        warmup_steps: linear warm-up at the start.
        learn_curvature: let a Lorentz model's curvature move; frozen by default so the
            space itself stays comparable with the original model.
        seed: batch order and every random draw of the method.
    """

    steps: int = 25
    lr: float = 2e-4
    retain_batch_size: int = 96
    forget_batch_size: int = 64
    weight_decay: float = 0.0
    warmup_steps: int = 0
    learn_curvature: bool = False
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MethodContext:
    """What a method may use besides its batches.

    Attributes:
        original: a frozen copy of the model before unlearning (``f0``), in eval mode.
        retain_captions: canonical captions of D_r, the pool of mismatched partners.
        tokens: tokenizer cache for those captions.
        seed: the run's seed, for per-step random draws.
    """

    original: nn.Module
    retain_captions: list[str]
    tokens: TokenCache
    seed: int

    def random_retain_tokens(self, count: int, step: int, salt: int) -> Tensor:
        """Token ids of ``count`` captions drawn from D_r for ``step``. ``() -> (count, L)``."""
        picks = torch.randint(len(self.retain_captions), (count,), generator=step_generator(self.seed, step, salt))
        return self.tokens([self.retain_captions[i] for i in picks.tolist()])


class UnlearningMethod:
    """Base class: subclasses set ``name`` and ``config_class`` and implement :meth:`loss`."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig, context: MethodContext) -> None:
        self.config = config
        self.context = context

    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error if the method cannot run on ``model`` (for example its geometry)."""

    def loss(self, model: nn.Module, retain: PairBatch, forget: PairBatch, step: int) -> StepOutput:
        raise NotImplementedError


_REGISTRY: dict[str, type[UnlearningMethod]] = {}
MethodT = TypeVar("MethodT", bound=type[UnlearningMethod])


def register(name: str) -> Callable[[MethodT], MethodT]:
    """Class decorator that makes a method available under ``name``."""

    def decorate(cls: MethodT) -> MethodT:
        if name in _REGISTRY:
            raise ValueError(f"an unlearning method named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[UnlearningMethod]:
    """The method registered as ``name``; unknown names list the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown unlearning method {name!r}; choose one of {available_methods()}") from None


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": lambda text: {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()],
}


def make_config(config_class: type[MethodConfig], overrides: dict[str, Any]) -> MethodConfig:
    """``config_class`` with ``overrides`` applied (see :func:`make_config_values`); a value that
    the config's own checks reject is a :class:`~vlunlearn.errors.ConfigError` too."""
    values = make_config_values(config_class, overrides)
    try:
        return config_class(**values)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def make_config_values(config_class: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """Check ``overrides`` against the fields of the dataclass ``config_class``. String values
    (from ``--set key=value``) are parsed to the field's type; unknown keys and values of the
    wrong type are clear errors."""
    types = {f.name: str(f.type) for f in fields(config_class)}
    unknown = sorted(set(overrides) - set(types))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} for {config_class.__name__}; valid settings: {sorted(types)}")
    values = {}
    for key, value in overrides.items():
        kind = types[key]
        try:
            if isinstance(value, str) and kind != "str":
                value = _PARSERS[kind](value)
            elif kind == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value).__name__ != kind:
                raise TypeError
        except (KeyError, ValueError, TypeError):
            raise ConfigError(f"setting {key}={value!r} is not a valid {kind}") from None
        values[key] = value
    return values


class UnlearningObjective:
    """Adapter from a method to the training loop: fetches B_r and B_f of each step."""

    def __init__(self, method: UnlearningMethod, retain: PairSampler, forget: PairSampler) -> None:
        self.method = method
        self.retain = retain
        self.forget = forget

    def __call__(self, model: nn.Module, step: int) -> StepOutput:
        return self.method.loss(model, self.retain.batch(step), self.forget.batch(step), step)


def derangement(n: int, generator: torch.Generator) -> Tensor:
    """A random permutation of ``range(n)`` with no fixed point (one cycle). ``() -> (n,)``."""
    if n < 2:
        raise ValueError(f"a mismatched partner needs at least 2 forget pairs per batch, got {n}")
    order = torch.randperm(n, generator=generator)
    result = torch.empty(n, dtype=torch.long)
    result[order] = order.roll(-1)
    return result


def encode(model: nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
    """Image and text embeddings of a batch (sharded over ranks in a distributed run). ``-> (B, D), (B, D)``."""
    return data_parallel(model, batch.images, batch.tokens)


@torch.no_grad()
def encode_original(context: MethodContext, batch: PairBatch) -> tuple[Tensor, Tensor]:
    """Embeddings of a batch under the frozen original model ``f0``."""
    return data_parallel(context.original, batch.images, batch.tokens)
