"""Studies (DESIGN §7): a grid of unlearning runs over geometries, methods, requests and seeds,
run resumably in parallel (locally or on a cluster), then aggregated into a report whose claims
section is computed from the data.

    from vlunlearn.study import preset, run_study
    run_study(preset("hac", quick=True), "runs/hac-quick", jobs=2)
"""

from vlunlearn.study.grid import Cell, cells
from vlunlearn.study.presets import PRESETS, preset
from vlunlearn.study.runner import run_study
from vlunlearn.study.spec import Geometry, RequestSpec, StudySpec, Variant, load_spec

__all__ = ["PRESETS", "Cell", "Geometry", "RequestSpec", "StudySpec", "Variant", "cells", "load_spec", "preset", "run_study"]
