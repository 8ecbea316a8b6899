"""A study's grid: one :class:`Cell` per (geometry, seed, request, label), with its dependencies.

For each geometry and seed the ``original`` cell of the first request pretrains the model and
keeps it (``model/``); every other cell of that geometry and seed starts from it (or from the
geometry's checkpoint, when the spec names one: then nothing is pretrained). A ``retrain`` cell
needs its original; a method cell needs its original and its request's ``retrain`` cell (whose
D_f pair scores and wall time it is compared with).

Requests are drawn once per (seed, size): concepts from the data's class names, samples from its
training ids, each seeded by the seed and the size only, so every label and geometry of a seed
forgets the same thing and labels compare pairwise by seed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from vlunlearn.data import PairDataset
from vlunlearn.errors import ConfigError
from vlunlearn.study.spec import Geometry, RequestSpec, StudySpec, Variant

_DATA: dict[tuple, tuple[PairDataset, PairDataset]] = {}  # per process: cells of one study share their data


@dataclass(frozen=True)
class Cell:
    """One run of a study; its identifying fields are those of its ``record.json``.

    Attributes:
        id: unique and filesystem safe, e.g. ``lorentz-s0-c2-hac-no-ec``.
        request: ``{"kind": "concepts", "size", "concepts"}`` or ``{"kind": "samples", "size",
            "count", "sample_ids"}`` (the ids stay out of the record).
        original: the cell whose ``model/`` holds the original (``None``: this cell pretrains it,
            or the geometry's ``checkpoint`` is the original).
        oracle: the request's ``retrain`` cell (method cells only).
        depends_on: cells that must be done before this one runs.
    """

    id: str
    study: str
    label: str
    method: str
    settings: dict[str, Any]
    geometry: str
    model: str
    data: str
    request: dict[str, Any]
    seed: int
    depends_on: tuple[str, ...] = ()
    original: str | None = None
    checkpoint: str | None = None
    oracle: str | None = None

    @property
    def pretrains(self) -> bool:
        """Whether this cell pretrains (and keeps) its geometry and seed's original."""
        return self.original is None and self.checkpoint is None

    def record_request(self) -> dict[str, Any]:
        """The request as a record shows it (no sample ids)."""
        return {k: v for k, v in self.request.items() if k != "sample_ids"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def original_model_config(spec: StudySpec, geometry: Geometry):
    """The model configuration of ``geometry``'s originals: its checkpoint's, or the recipe's model."""
    from vlunlearn.models import load_any
    from vlunlearn.models.configs import model_config
    from vlunlearn.training.pretrain import PretrainConfig

    if geometry.checkpoint is None:
        return model_config(spec.recipe.get("model", PretrainConfig.model), geometry.name)
    config = load_any(geometry.checkpoint).config
    if config.geometry != geometry.name:
        raise ConfigError(f"the checkpoint {geometry.checkpoint} is a {config.geometry} model, listed as {geometry.name}")
    return config


def geometry_models(spec: StudySpec) -> dict[str, str]:
    """The model name of each geometry's originals."""
    return {geometry.name: original_model_config(spec, geometry).name for geometry in spec.geometries}


def study_data(spec: StudySpec) -> tuple[PairDataset, PairDataset]:
    """The study's ``(train, test)`` data (a user's images are read at the first geometry's model
    input size; the spec's ``classes`` are the classes), loaded once per process."""
    from vlunlearn.data.builtin import BUILTIN_DATASETS
    from vlunlearn.data.sources import load_data

    config = None if spec.data in BUILTIN_DATASETS else original_model_config(spec, spec.geometries[0])
    key = (spec.data, spec.test_data, spec.classes,
           None if config is None else (config.image_size, len(config.pixel_mean)))
    if key not in _DATA:
        _DATA[key] = load_data(spec.data, spec.test_data, config, classes=spec.classes)
    return _DATA[key]


def draw_concepts(class_names: tuple[str, ...], seed: int, size: int) -> list[str]:
    """``size`` class names drawn with a generator seeded by ``(seed, size)``, in class order."""
    if not 1 <= size < len(class_names):
        raise ConfigError(f"a concepts request of {size} classes: the data has {len(class_names)} classes "
                          "and at least one must be retained")
    picked = set(random.Random(f"concepts:{seed}:{size}").sample(list(class_names), size))
    return [name for name in class_names if name in picked]


def draw_samples(ids: tuple[str, ...], seed: int, size: int | float) -> list[str]:
    """Training ids drawn with a generator seeded by ``(seed, size)``, in data order: ``size`` of
    them (an int) or that fraction of all of them (a float, at least one)."""
    count = size if isinstance(size, int) else max(1, round(size * len(ids)))
    if not 1 <= count < len(ids):
        raise ConfigError(f"a samples request of {size} selects {count} of {len(ids)} training pairs")
    picked = sorted(random.Random(f"samples:{seed}:{size!r}").sample(range(len(ids)), count))
    return [ids[i] for i in picked]


def request_tag(kind: str, size: int | float) -> str:
    """The request part of a cell id: ``c2`` (2 concepts), ``f0.01`` (1% of pairs), ``n30`` (30 pairs)."""
    if kind == "concepts":
        return f"c{size}"
    return f"f{size:g}" if isinstance(size, float) else f"n{size}"


def requests(spec_request: RequestSpec, train: PairDataset, seed: int) -> list[dict[str, Any]]:
    """The drawn requests of ``spec_request`` for ``seed``, one per size."""
    drawn = []
    for size in spec_request.sizes:
        if spec_request.kind == "concepts":
            drawn.append({"kind": "concepts", "size": size, "concepts": draw_concepts(train.class_names, seed, size)})
        else:
            ids = draw_samples(tuple(train.ids), seed, size)
            drawn.append({"kind": "samples", "size": size, "count": len(ids), "sample_ids": ids})
    return drawn


def cells(spec: StudySpec, train: PairDataset | None = None, models: dict[str, str] | None = None) -> list[Cell]:
    """Every cell of ``spec``, originals first, then oracles, then methods within each request.

    ``train`` is the training data the requests are drawn from (default: loaded as the study
    loads it); ``models`` the model name per geometry (default: the recipe's model, or the
    checkpoint's).
    """
    train = train if train is not None else study_data(spec)[0]
    models = models or geometry_models(spec)
    grid: list[Cell] = []
    for geometry in spec.geometries:
        for seed in spec.seeds:
            drawn = [request for spec_request in spec.requests for request in requests(spec_request, train, seed)]
            prefix = f"{geometry.name}-s{seed}"
            first = f"{prefix}-{request_tag(drawn[0]['kind'], drawn[0]['size'])}-original"
            source = None if geometry.checkpoint else first
            for request in drawn:
                base = f"{prefix}-{request_tag(request['kind'], request['size'])}"
                own, oracle = f"{base}-original", f"{base}-retrain"
                for variant in _in_order(v for v in spec.labels if v.runs_in(geometry.name)):
                    cell_id = f"{base}-{variant.label}"
                    needs = {"original": (source,), "retrain": (source,)}.get(variant.method, (own, oracle))
                    grid.append(Cell(
                        id=cell_id, study=spec.name, label=variant.label, method=variant.method,
                        settings=spec.method_settings(variant), geometry=geometry.name, model=models[geometry.name],
                        data=spec.data, request=request, seed=seed,
                        depends_on=tuple(d for d in needs if d is not None and d != cell_id),
                        original=None if cell_id == first else source, checkpoint=geometry.checkpoint,
                        oracle=oracle if variant.method not in ("original", "retrain") else None,
                    ))
    return grid


def _in_order(variants) -> list[Variant]:
    """Originals, then the oracle, then the methods in their given order."""
    return sorted(variants, key=lambda v: (v.method != "original", v.method != "retrain"))


def waves(grid: list[Cell]) -> list[list[Cell]]:
    """The cells in dependency order: wave 0 needs nothing (the pretraining originals), each later
    wave only cells of earlier waves (the oracles and the originals' other requests, then the methods)."""
    depth: dict[str, int] = {}
    for cell in grid:  # cells() lists every dependency before its dependants
        depth[cell.id] = 1 + max((depth[d] for d in cell.depends_on), default=-1)
    return [[c for c in grid if depth[c.id] == level] for level in range(max(depth.values(), default=-1) + 1)]
