"""What every unlearning method shares: its config, its context, the registry.

A method is a loss over one retain batch B_r and one forget batch B_f per step
(DESIGN §4). It runs inside the shared training loop through
:class:`UnlearningObjective`, and sees the geometry only through
``model.geometry``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from vlunlearn.errors import ConfigError
from vlunlearn.models.configs import TINY_NAMES
from vlunlearn.training.batches import PairBatch, PairSampler, TokenCache, step_generator
from vlunlearn.training.distributed import data_parallel
from vlunlearn.training.loop import StepOutput


RELEASED_LR_FACTOR = 0.05
"""Learning rate of a released model (any model that is not a built-in ``tiny*``) relative to a
method's ``tiny_lr``. Fine-tuning recipes for released ViT-B/L dual encoders use about 1e-5
(MultiDelete's ALBEF/BLIP configs 1e-5 to 2e-5; CLIP unlearning work 1e-7 to 1e-5), a twentieth of
the 2e-4 that suits a 28-pixel tiny model; the tiny rates would wreck a released model."""

TOWERS = ("both", "image", "graph", "text")


@dataclass(frozen=True)
class MethodConfig:
    """Budget, optimisation and parameter scope shared by every method (a method's config extends it).

    Attributes:
        epochs: budget in passes over D_f: ``ceil(epochs * ceil(|D_f| / forget_batch_size))``
            steps, each pass showing every forget pair once, whatever the size of the request (the
            papers count epochs over D_f: AC 10, MultiDelete 5), and at least ``min_steps``.
            2 by default; AC and HAC document their own budget.
        min_steps: the fewest steps a budget from ``epochs`` may have. A small request gives few
            batches per pass, too few updates for the model to move through the transient
            phase in which the forget loss disturbs every class before the retain loss repairs
            it (seen on the built-in data: 10 steps leave retain accuracy 12 points down where
            20 recover it); 1 = no floor.
        steps: an explicit number of optimizer steps, replacing ``epochs`` and ``min_steps``
            (``None``: from epochs).
        lr: AdamW learning rate, constant after warm-up (short runs gain nothing from decay).
            ``None`` picks the model family's rate: the method's ``tiny_lr`` for the built-in
            ``tiny*`` models, ``tiny_lr * RELEASED_LR_FACTOR`` for every other model.
        retain_batch_size: pairs of D_r per step.
        forget_batch_size: pairs of D_f per step (capped at |D_f|).
        weight_decay: 0 so that unlearning changes only what the loss asks for.
        warmup_steps: linear warm-up at the start.
        learn_curvature: let a Lorentz model's curvature move; frozen by default so the
            space itself stays comparable with the original model.
        towers: which towers are updated: ``both``, the input tower (``image`` or ``graph``, the model's) or ``text`` (shared scalars such
            as the temperature train only with ``both``).
        parameter_filter: a regular expression; only parameters whose name it matches
            (``re.search``) are updated, e.g. ``attn`` for attention only ("" = all in ``towers``).
        seed: batch order and every random draw of the method.
    """

    tiny_lr: ClassVar[float] = 2e-4
    """The rate for built-in tiny models: a tenth of the pretraining peak forgets within the
    budget without disturbing the retained classes."""

    epochs: float = 2.0
    min_steps: int = 1
    steps: int | None = None
    lr: float | None = None
    retain_batch_size: int = 96
    forget_batch_size: int = 64
    weight_decay: float = 0.0
    warmup_steps: int = 0
    learn_curvature: bool = False
    towers: str = "both"
    parameter_filter: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.min_steps < 1:
            raise ValueError(f"min_steps must be at least 1, got {self.min_steps}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.towers not in TOWERS:
            raise ValueError(f"towers must be one of {TOWERS}, got {self.towers!r}")
        try:
            re.compile(self.parameter_filter)
        except re.error as error:
            raise ValueError(f"parameter_filter {self.parameter_filter!r} is not a regular expression: {error}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def resolve(self, forget_size: int, model: nn.Module) -> "MethodConfig":
        """This config with ``steps`` and ``lr`` fixed for a request of ``forget_size`` pairs on ``model``."""
        batches_per_epoch = math.ceil(forget_size / min(self.forget_batch_size, forget_size))
        steps = self.steps or max(self.min_steps, math.ceil(self.epochs * batches_per_epoch))
        return replace(self, steps=steps, lr=self.lr or family_lr(type(self), model))

    @classmethod
    def budget(cls) -> str:
        """The default budget in words, for ``--help``."""
        defaults = cls()
        epochs, floor = defaults.epochs, defaults.min_steps
        passes = f"{epochs:g} epoch{'' if epochs == 1 else 's'} over D_f" + (f" (at least {floor} steps)" if floor > 1 else "")
        return f"{passes}; lr {cls.tiny_lr:.1e} on tiny models, {cls.tiny_lr * RELEASED_LR_FACTOR:.1e} on released ones"


def family_lr(config_class: type[MethodConfig], model: nn.Module) -> float:
    """The default learning rate of ``config_class`` for ``model``'s family (see ``RELEASED_LR_FACTOR``)."""
    released = getattr(model.config, "name", None) not in TINY_NAMES
    return config_class.tiny_lr * (RELEASED_LR_FACTOR if released else 1.0)


@dataclass
class MethodContext:
    """What a method may use besides its batches.

    Attributes:
        original: a frozen copy of the model before unlearning (``f0``), in eval mode.
        retain_captions: canonical captions of D_r, the pool of mismatched partners.
        forget_captions: canonical caption of every D_f pair, by index in D_f.
        tokens: tokenizer cache for those captions.
        seed: the run's seed, for per-step random draws.
        request_kind: ``concepts`` or ``samples`` (what the request names).
    """

    original: nn.Module
    retain_captions: list[str]
    forget_captions: list[str]
    tokens: TokenCache
    seed: int
    request_kind: str = "concepts"

    def random_retain_captions(self, count: int, step: int, salt: int) -> list[str]:
        """``count`` captions drawn from D_r for ``step`` (``salt`` tells a method's draws apart)."""
        picks = torch.randint(len(self.retain_captions), (count,), generator=step_generator(self.seed, step, salt))
        return [self.retain_captions[i] for i in picks.tolist()]

    def random_retain_tokens(self, count: int, step: int, salt: int) -> Tensor:
        """Token ids of :meth:`random_retain_captions`. ``() -> (count, L)``."""
        return self.tokens(self.random_retain_captions(count, step, salt))

    @cached_property
    def _distinct_forget_captions(self) -> tuple[list[str], dict[str, int]]:
        """D_f's distinct captions, sorted, and each one's position (computed once per run)."""
        distinct = sorted(set(self.forget_captions))
        return distinct, {caption: i for i, caption in enumerate(distinct)}

    def forget_partner_captions(self, indices: Tensor, step: int, salt: int) -> list[str]:
        """For each D_f pair at ``indices``, a caption drawn uniformly from the *other* distinct
        captions of all of D_f (never the pair's own caption, as the AC authors draw partners
        from the whole forget set). ``(B,) -> B`` captions."""
        distinct, position = self._distinct_forget_captions
        if len(distinct) < 2:
            raise ConfigError(
                "a forget-pool partner needs at least 2 distinct captions in D_f; every forget pair reads "
                f"{distinct[0]!r}: use partner_pool=retain"
            )
        own = torch.tensor([position[self.forget_captions[i]] for i in indices.tolist()])
        shift = torch.randint(1, len(distinct), own.shape, generator=step_generator(self.seed, step, salt))
        return [distinct[i] for i in ((own + shift) % len(distinct)).tolist()]


class UnlearningMethod:
    """Base class: subclasses set ``name`` and ``config_class`` and implement :meth:`loss`."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig, context: MethodContext) -> None:
        self.config = config
        self.context = context

    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error if the method cannot run on ``model`` (for example its geometry)."""

    def prepare(self, model: nn.Module, retain: PairSampler, forget: PairSampler) -> None:
        """Called once before the first step with the model to unlearn (for example to compute a
        gradient saliency mask); nothing by default."""

    def finish(self, model: nn.Module) -> None:
        """Called once after the last step (for example to remove hooks ``prepare`` installed)."""

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


def method_summaries() -> list[tuple[str, str, str]]:
    """``(name, one-line description, default budget)`` of every registered method, by name."""
    return [
        (name, (cls.__doc__ or "").strip().split("\n")[0].replace("``", ""), cls.config_class.budget())
        for name, cls in sorted(_REGISTRY.items())
    ]


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
        if kind.endswith(" | None"):
            if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
                values[key] = None
                continue
            kind = kind.removesuffix(" | None")
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
    return data_parallel(model, batch.inputs, batch.tokens)


@torch.no_grad()
def encode_original(context: MethodContext, batch: PairBatch) -> tuple[Tensor, Tensor]:
    """Embeddings of a batch under the frozen original model ``f0``."""
    return data_parallel(context.original, batch.inputs, batch.tokens)
