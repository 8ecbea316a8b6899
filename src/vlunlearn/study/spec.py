"""What a study is: a typed, frozen :class:`StudySpec`, read from TOML or YAML by :func:`load_spec`.

A study file names the data, how the originals are made (a pretraining ``recipe``, or a
``checkpoint`` per geometry), the method variants (``labels``), the requests and the seeds::

    name = "my-study"
    data = "digits"                  # a built-in dataset, or an annotation file / shard folder
    # test_data = "test.jsonl"       # the held-out split of a user's data
    seeds = [0, 1, 2]
    claims = ["hac.lower_forget"]    # claim ids of vlunlearn.study.claims, carried into study.json
    geometries = ["euclidean", {name = "lorentz", checkpoint = "runs/meru/model"}]
    recipe = {steps = 200}           # PretrainConfig fields (default: the demo's recipe for the data)
    method_overrides = {epochs = 1.0}   # MethodConfig fields applied to every method cell
    prompts = ["a photo of a {}."]   # zero-shot prompt templates (default: the data's)
    classes = ["cat", "dog"]         # the classes zero-shot evaluation ranks (default: all of the data's)

    [[labels]]
    label = "hac-no-ec"              # the variant's name in records and reports
    method = "hac"
    settings = {lambda_ec = 0.0}     # overrides passed to vlunlearn.unlearn
    geometries = ["lorentz"]         # optional: the geometries it runs in (default: all)

    [[requests]]
    kind = "concepts"                # or "samples"
    sizes = [1, 2]                   # concepts: class counts; samples: fractions (0.01) or counts (30)

A label may also be just a method name (``labels = ["original", "retrain", "ac"]``). The
``original`` and ``retrain`` labels are always part of a study (method cells are measured against
them) and are added when missing. Relative paths in a file are relative to the file's folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from vlunlearn.errors import ConfigError

GEOMETRY_NAMES = ("euclidean", "lorentz")
REQUEST_KINDS = ("concepts", "samples")
SPECIAL_METHODS = ("original", "retrain")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
TOP_KEYS = ("name", "data", "test_data", "recipe", "geometries", "labels", "requests", "seeds", "claims",
            "method_overrides", "prompts", "classes")
RECIPE_EXCLUDED = ("geometry", "seed")  # set per cell


@dataclass(frozen=True)
class Geometry:
    """One geometry of the study; with ``checkpoint`` its original is that model (no pretraining)."""

    name: str
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.name not in GEOMETRY_NAMES:
            raise ConfigError(f"unknown geometry {self.name!r}; choose from {list(GEOMETRY_NAMES)}")


@dataclass(frozen=True)
class Variant:
    """A method variant: ``label`` names it in records; ``settings`` go to ``vlunlearn.unlearn``;
    ``geometries`` restricts where it runs (``None``: every geometry of the study)."""

    label: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    geometries: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not NAME_PATTERN.match(self.label):
            raise ConfigError(f"label {self.label!r} must be lower-case letters, digits, '-', '_' or '.'")
        if self.method in SPECIAL_METHODS and self.label != self.method:
            raise ConfigError(f"label {self.label!r}: the {self.method} model has the label {self.method!r}")
        if self.method == "original" and self.settings:
            raise ConfigError("label 'original': the untouched model takes no settings")
        if self.geometries is not None:
            object.__setattr__(self, "geometries", tuple(self.geometries))
            for name in self.geometries:
                Geometry(name)

    def runs_in(self, geometry: str) -> bool:
        """Whether this variant has cells in ``geometry``."""
        return self.geometries is None or geometry in self.geometries


@dataclass(frozen=True)
class RequestSpec:
    """Requests of one kind: ``concepts`` (``sizes`` = class counts) or ``samples`` (``sizes`` =
    fractions of the training pairs in (0, 1), or pair counts as integers)."""

    kind: str
    sizes: tuple[int | float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(self.sizes))
        if self.kind not in REQUEST_KINDS:
            raise ConfigError(f"request kind {self.kind!r}: choose from {list(REQUEST_KINDS)}")
        if not self.sizes:
            raise ConfigError(f"{self.kind} request: give at least one size")
        for size in self.sizes:
            if isinstance(size, bool) or not isinstance(size, (int, float)):
                raise ConfigError(f"{self.kind} request size {size!r} is not a number")
            if self.kind == "concepts" and not (isinstance(size, int) and size >= 1):
                raise ConfigError(f"concepts request size {size!r}: a number of classes (an integer >= 1)")
            if self.kind == "samples" and not (isinstance(size, int) and size >= 1 or isinstance(size, float) and 0 < size < 1):
                raise ConfigError(f"samples request size {size!r}: a fraction in (0, 1) or a count (an integer >= 1)")
        if len(set(self.sizes)) != len(self.sizes):
            raise ConfigError(f"{self.kind} request sizes {list(self.sizes)} repeat a size")


@dataclass(frozen=True)
class StudySpec:
    """A study: every (geometry, seed, request, label) is one cell (see :mod:`vlunlearn.study.grid`).

    ``recipe`` holds the :class:`~vlunlearn.training.pretrain.PretrainConfig` fields of the
    originals (not ``geometry`` and ``seed``, which each cell sets); ``method_overrides`` the
    :class:`~vlunlearn.methods.MethodConfig` fields given to every method cell before its own
    settings (e.g. a shorter budget); ``claims`` the ids the analysis evaluates; ``prompts`` the
    zero-shot class prompt templates and ``classes`` the classes zero-shot evaluation ranks
    (``None``: the data's; see :func:`~vlunlearn.data.sources.restrict_classes`).
    """

    name: str
    data: str
    recipe: dict[str, Any]
    geometries: tuple[Geometry, ...]
    labels: tuple[Variant, ...]
    requests: tuple[RequestSpec, ...]
    seeds: tuple[int, ...]
    claims: tuple[str, ...] = ()
    method_overrides: dict[str, Any] = field(default_factory=dict)
    test_data: str | None = None
    prompts: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("geometries", "labels", "requests", "seeds", "claims"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("prompts", "classes"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "geometries", tuple(Geometry(g) if isinstance(g, str) else g for g in self.geometries))
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ConfigError(f"study name {self.name!r} must be lower-case letters, digits, '-', '_' or '.'")
        present = {variant.label for variant in self.labels}
        added = tuple(Variant(m, m) for m in SPECIAL_METHODS if m not in present)
        object.__setattr__(self, "labels", added + self.labels)
        _check_unique("geometries", [g.name for g in self.geometries])
        _check_unique("labels", [v.label for v in self.labels])
        _check_unique("request kinds", [r.kind for r in self.requests])
        _check_unique("seeds", list(self.seeds))
        if not self.geometries or not self.requests or not self.seeds:
            raise ConfigError("a study needs at least one geometry, one request and one seed")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ConfigError(f"seeds {list(self.seeds)} must be non-negative integers")
        _check_recipe(self.recipe)
        _check_methods(self.labels, self.method_overrides)
        _check_zero_shot(self.prompts, self.classes)

    def with_seeds(self, count: int) -> "StudySpec":
        """This spec with the seeds ``0 .. count - 1``."""
        if count < 1:
            raise ConfigError(f"--seeds {count}: a study needs at least one seed")
        return replace(self, seeds=tuple(range(count)))

    def method_settings(self, variant: Variant) -> dict[str, Any]:
        """The overrides a cell of ``variant`` passes to ``unlearn`` (``method_overrides`` first)."""
        if variant.method in SPECIAL_METHODS:
            return dict(variant.settings)
        return {**self.method_overrides, **variant.settings}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the form kept in ``study.json``, compared when a study resumes)."""
        return json.loads(json.dumps({
            "name": self.name, "data": self.data, "test_data": self.test_data, "recipe": self.recipe,
            "geometries": [{"name": g.name, "checkpoint": g.checkpoint} for g in self.geometries],
            "labels": [{"label": v.label, "method": v.method, "settings": v.settings,
                        "geometries": None if v.geometries is None else list(v.geometries)} for v in self.labels],
            "requests": [{"kind": r.kind, "sizes": list(r.sizes)} for r in self.requests],
            "seeds": list(self.seeds), "claims": list(self.claims), "method_overrides": self.method_overrides,
            "prompts": None if self.prompts is None else list(self.prompts),
            "classes": None if self.classes is None else list(self.classes),
        }))


def _check_unique(what: str, values: Sequence) -> None:
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ConfigError(f"{what} repeat {repeated}")


def _check_recipe(recipe: Mapping[str, Any]) -> None:
    from vlunlearn.methods.base import make_config_values
    from vlunlearn.models.configs import model_config
    from vlunlearn.training.pretrain import PretrainConfig

    allowed = sorted(f.name for f in fields(PretrainConfig) if f.name not in RECIPE_EXCLUDED)
    unknown = sorted(set(recipe) - set(allowed))
    if unknown:
        raise ConfigError(f"recipe: unknown key(s) {unknown}; valid keys: {allowed}")
    weights = recipe.get("caption_weights")
    if weights is not None and (not isinstance(weights, (list, tuple)) or len(weights) != 3):
        raise ConfigError(f"recipe: caption_weights {weights!r} must be three numbers (generic, family, class) or null")
    make_config_values(PretrainConfig, {k: v for k, v in recipe.items() if k != "caption_weights"})
    model_config(recipe.get("model", PretrainConfig.model))


def _check_zero_shot(prompts: Sequence[str] | None, classes: Sequence[str] | None) -> None:
    from vlunlearn.evaluation.zero_shot import check_templates

    try:
        check_templates(prompts)
    except ConfigError as error:
        raise ConfigError(f"prompts: {error}") from None
    if classes is not None and (not classes or not all(isinstance(c, str) and c.strip() for c in classes)):
        raise ConfigError(f"classes {list(classes)} must be one or more non-empty names")


def _check_methods(labels: Sequence[Variant], method_overrides: Mapping[str, Any]) -> None:
    from vlunlearn.methods import MethodConfig, available_methods, get_method, make_config
    from vlunlearn.methods.base import make_config_values
    from vlunlearn.training.pretrain import PretrainConfig

    try:
        make_config_values(MethodConfig, dict(method_overrides))
    except ConfigError as error:
        raise ConfigError(f"method_overrides: {error}") from None
    for variant in labels:
        if variant.method not in (*SPECIAL_METHODS, *available_methods()):
            raise ConfigError(f"label {variant.label!r}: unknown method {variant.method!r}; "
                              f"choose from {[*SPECIAL_METHODS, *available_methods()]}")
        try:
            if variant.method == "retrain":
                make_config_values(PretrainConfig, dict(variant.settings))
            elif variant.method != "original":
                make_config(get_method(variant.method).config_class, {**method_overrides, **variant.settings})
        except ConfigError as error:
            raise ConfigError(f"label {variant.label!r}: {error}") from None


# ---------------------------------------------------------------------------------------- files


def load_spec(path: str | Path) -> StudySpec:
    """Read a study file (``.toml``, ``.yaml`` or ``.yml``); every error names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the study file {path}: {error.strerror}") from None
    document = _parse(path, text)
    try:
        return spec_from_dict(document, base=path.parent, default_name=path.stem)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _parse(path: Path, text: str) -> Any:
    """The document in ``text``, parsed by ``path``'s suffix."""
    suffix = path.suffix.lower()
    if suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the study in TOML") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
    raise ConfigError(f"{path}: a study file ends in .toml, .yaml or .yml")


def spec_from_dict(document: Any, base: Path = Path("."), default_name: str = "study") -> StudySpec:
    """A :class:`StudySpec` from a parsed study file (see the module docstring)."""
    from vlunlearn.data.builtin import BUILTIN_DATASETS
    from vlunlearn.demo import DEMO_RECIPES

    document = _table(document, "the study")
    _known(document, TOP_KEYS, "the study")
    if "data" not in document or "labels" not in document or "requests" not in document:
        raise ConfigError("a study needs the keys 'data', 'labels' and 'requests'")
    data = _text(document["data"], "data")
    if data not in BUILTIN_DATASETS:
        data = _path(data, base)
    test_data = document.get("test_data")
    return StudySpec(
        name=_text(document.get("name", default_name), "name").lower(),
        data=data,
        test_data=None if test_data is None else _path(_text(test_data, "test_data"), base),
        recipe={**DEMO_RECIPES.get(data, {}), **_table(document.get("recipe", {}), "recipe")},
        geometries=tuple(_geometry(g, f"geometries[{i}]", base)
                         for i, g in enumerate(_list(document.get("geometries", list(GEOMETRY_NAMES)), "geometries"))),
        labels=tuple(_variant(v, f"labels[{i}]") for i, v in enumerate(_list(document["labels"], "labels"))),
        requests=tuple(_request(r, f"requests[{i}]") for i, r in enumerate(_list(document["requests"], "requests"))),
        seeds=tuple(_list(document.get("seeds", [0]), "seeds")),
        claims=tuple(_text(c, "claims") for c in _list(document.get("claims", []), "claims")),
        method_overrides=_table(document.get("method_overrides", {}), "method_overrides"),
        prompts=_names(document.get("prompts"), "prompts"),
        classes=_names(document.get("classes"), "classes"),
    )


def _geometry(entry: Any, where: str, base: Path) -> Geometry:
    if isinstance(entry, str):
        return _built(Geometry, where, name=entry)
    entry = _table(entry, where)
    _known(entry, ("name", "checkpoint"), where)
    checkpoint = entry.get("checkpoint")
    return _built(Geometry, where, name=entry.get("name"),
                  checkpoint=None if checkpoint is None else _path(_text(checkpoint, f"{where}.checkpoint"), base))


def _variant(entry: Any, where: str) -> Variant:
    if isinstance(entry, str):
        return _built(Variant, where, label=entry, method=entry)
    entry = _table(entry, where)
    _known(entry, ("label", "method", "settings", "geometries"), where)
    method = _text(entry.get("method", entry.get("label")), f"{where}.method")
    geometries = entry.get("geometries")
    return _built(Variant, where, label=entry.get("label", method), method=method,
                  settings=_table(entry.get("settings", {}), f"{where}.settings"),
                  geometries=None if geometries is None else tuple(_list(geometries, f"{where}.geometries")))


def _request(entry: Any, where: str) -> RequestSpec:
    entry = _table(entry, where)
    _known(entry, ("kind", "sizes"), where)
    return _built(RequestSpec, where, kind=entry.get("kind"), sizes=tuple(_list(entry.get("sizes", []), f"{where}.sizes")))


def _built(factory: type, where: str, **values: Any):
    try:
        return factory(**values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _known(entry: Mapping, allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(allowed)}")


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table (key = value pairs), not {value!r}")
    return dict(value)


def _list(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, not {value!r}")
    return list(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string, not {value!r}")
    return value.strip()


def _names(value: Any, where: str) -> tuple[str, ...] | None:
    """An optional list of strings (``None`` when absent)."""
    return None if value is None else tuple(_text(item, where) for item in _list(value, where))


def _path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())
