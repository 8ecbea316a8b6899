"""The papers' experiments as studies: ``hac`` (HAC, arXiv 2503.15166) and ``multidelete``
(MultiDelete, arXiv 2311.12047), on ``fashion-scenes`` with the demo's recipe.

``quick=True`` is a smoke run of the same machinery (2 seeds, a short pretraining recipe, a
fixed 10-step method budget, fewer labels and sizes) that finishes within 10 minutes on two
cores with ``--jobs 2``; its numbers only show that every part runs, not whether a claim holds.
"""

from __future__ import annotations

from vlunlearn.demo import DEMO_RECIPES
from vlunlearn.errors import ConfigError
from vlunlearn.study.spec import Geometry, RequestSpec, StudySpec, Variant

DATA = "fashion-scenes"
SEEDS = (0, 1, 2)
QUICK_SEEDS = (0, 1)
QUICK_RECIPE = {**DEMO_RECIPES[DATA], "steps": 60}  # 60 of the demo's 500 pretraining steps: minutes, not hours
QUICK_METHODS = {"steps": 10}
LORENTZ = ("lorentz",)
BASELINES = ("finetune", "neggrad_plus", "random_pairs", "salun", "scrub")

HAC_ABLATIONS = (
    Variant("hac-no-ec", "hac", {"lambda_ec": 0.0}, LORENTZ),  # without entailment calibration
    Variant("hac-no-norm", "hac", {"lambda_norm": 0.0}, LORENTZ),  # without norm regularisation
    Variant("hac-no-retain-ent", "hac", {"lambda_ent": 0.0}, LORENTZ),  # without the retain entailment term
    # with the generic pull: lambda_gen at the unit weight of HAC's other calibration terms (lambda_ec, lambda_norm)
    Variant("hac-generic-pull", "hac", {"lambda_gen": 1.0}, LORENTZ),
    Variant("hac-learn-curv", "hac", {"learn_curvature": True}, LORENTZ),  # with learnable curvature
)
MD_ABLATIONS = (
    Variant("md-no-md", "multidelete", {"lambda_md": 0.0}),
    Variant("md-no-mkr", "multidelete", {"lambda_mkr": 0.0}),
    Variant("md-no-ukr", "multidelete", {"lambda_ukr": 0.0}),
)
HAC_CLAIMS = ("hac.lower_forget", "hac.scaling", "hac.hierarchy", "hac.ablation_ec", "hac.ablation_norm",
              "hac.ablation_retain_ent", "hac.ablation_generic_pull", "hac.ablation_learn_curv")
MD_CLAIMS = ("md.distinguishability", "md.retained", "md.ablation_md", "md.ablation_mkr", "md.ablation_ukr")


def _methods(*names: str) -> tuple[Variant, ...]:
    return tuple(Variant(name, name, {}, LORENTZ if name == "hac" else None) for name in names)


def hac_study(quick: bool = False) -> StudySpec:
    """CLIP vs MERU: AC vs HAC vs the baselines on 1-6 concepts, and HAC's ablations."""
    if quick:
        labels = _methods("original", "retrain", "ac", "hac") + HAC_ABLATIONS[:1]
        return StudySpec("hac-quick", DATA, dict(QUICK_RECIPE), _both(), labels, (RequestSpec("concepts", (1, 3)),),
                         QUICK_SEEDS, HAC_CLAIMS, dict(QUICK_METHODS))
    labels = _methods("original", "retrain", *BASELINES, "ac", "hac", "multidelete") + HAC_ABLATIONS
    return StudySpec("hac", DATA, dict(DEMO_RECIPES[DATA]), _both(), labels, (RequestSpec("concepts", (1, 2, 4, 6)),),
                     SEEDS, HAC_CLAIMS)


def multidelete_study(quick: bool = False) -> StudySpec:
    """Sample deletion of 1-5% of the training pairs: MultiDelete, its term ablations and the baselines (CLIP)."""
    geometries = (Geometry("euclidean"),)
    if quick:
        labels = _methods("original", "retrain", "neggrad_plus", "multidelete") + MD_ABLATIONS
        return StudySpec("multidelete-quick", DATA, dict(QUICK_RECIPE), geometries, labels,
                         (RequestSpec("samples", (0.02, 0.05)),), QUICK_SEEDS, MD_CLAIMS, dict(QUICK_METHODS))
    labels = _methods("original", "retrain", "multidelete") + MD_ABLATIONS + _methods("neggrad", *BASELINES)
    return StudySpec("multidelete", DATA, dict(DEMO_RECIPES[DATA]), geometries, labels,
                     (RequestSpec("samples", (0.01, 0.02, 0.05)),), SEEDS, MD_CLAIMS)


PRESETS = {"hac": hac_study, "multidelete": multidelete_study}


def preset(name: str, quick: bool = False) -> StudySpec:
    """The preset study ``name`` (``hac`` or ``multidelete``), reduced with ``quick``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown study preset {name!r}; presets: {sorted(PRESETS)} (or give a .toml/.yaml study file)")
    return PRESETS[name](quick)


def _both() -> tuple[Geometry, ...]:
    return Geometry("euclidean"), Geometry("lorentz")
