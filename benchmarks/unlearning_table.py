"""Forget/retain zero-shot accuracy and wall time of every method against the retrain oracle.

For each geometry (CLIP, MERU) the tiny model is pretrained on the built-in data with the
demo's recipe (or read from ``--cache``), then for each request the oracle is retrained on D_r
and every method unlearns the original with its defaults, once per ``--seeds`` seed (the
method's seed: batch order and random draws). Writes ``table.md`` and ``results.json`` to
``--out``: mean and spread (min-max over seeds) of each figure, the gaps that the defaults are
tuned for (forget accuracy minus the oracle's, retain accuracy minus the original's) and each
method's wall time as a ratio to retraining, measured in the same run.

    python benchmarks/unlearning_table.py --out runs/table [--cache runs/table-cache] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from vlunlearn import unlearn
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.demo import DEMO_RECIPES
from vlunlearn.evaluation import evaluate_splits
from vlunlearn.models import load_model, save_model
from vlunlearn.runs import write_json
from vlunlearn.training.pretrain import PretrainConfig, pretrain

from _common import GEOMETRY_METHODS, cell, markdown_table, write_results


def cached(path: Path, build):
    """Load the model of the run folder ``path`` (``model/`` and ``results.json``, the layout
    ``vlunlearn pretrain`` writes), or build it (returning (model, seconds)) and save it so."""
    if (path / "results.json").exists():
        return load_model(path / "model"), json.loads((path / "results.json").read_text())["training"]["seconds"]
    model, seconds = build()
    save_model(model, path / "model")
    write_json(path / "results.json", {"training": {"seconds": seconds}})
    return model, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="fashion-scenes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help="folder to keep pretrained and retrained models in")
    parser.add_argument("--requests", nargs="+", default=["sneaker", "sneaker,bag,coat"], help="one or more concepts each")
    parser.add_argument("--geometries", nargs="+", default=["euclidean", "lorentz"])
    parser.add_argument("--methods", nargs="+", help="subset of methods (default: all)")
    parser.add_argument("--set", nargs="*", default=[], help="method=key=value overrides")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="method seeds")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=False)
    cache = args.cache or args.out / "models"
    tokenizer = Tokenizer()
    train_data, test_data = load_builtin(args.data, "train"), load_builtin(args.data, "test")
    overrides: dict[str, dict] = {}
    for item in args.set:
        method, key, value = item.split("=", 2)
        overrides.setdefault(method, {})[key] = value

    rows = []
    for geometry in args.geometries:
        recipe = PretrainConfig(geometry=geometry, **DEMO_RECIPES.get(args.data, {}))

        def build_original():
            model, result = pretrain(recipe, train_data, tokenizer=tokenizer, progress=False)
            return model, result.seconds

        original, pretrain_seconds = cached(cache / f"{geometry}-original", build_original)
        for request_text in args.requests:
            request = UnlearningRequest(concepts=tuple(request_text.split(",")))
            splits = make_splits(train_data, test_data, request)
            base = {"geometry": geometry, "forget": request_text}
            rows.append({**base, "method": "original", "seconds": pretrain_seconds, **evaluate_splits(original, splits, tokenizer)})

            def build_oracle():
                model, record = unlearn(original, splits, "retrain", recipe=recipe, tokenizer=tokenizer, progress=False)
                return model, record.seconds

            oracle, retrain_seconds = cached(cache / f"{geometry}-retrain-{request_text.replace(',', '+')}", build_oracle)
            rows.append({**base, "method": "retrain", "seconds": retrain_seconds, **evaluate_splits(oracle, splits, tokenizer)})
            reference = {"original": rows[-2], "retrain": rows[-1]}
            for method in args.methods or GEOMETRY_METHODS[geometry]:
                if method not in GEOMETRY_METHODS[geometry]:
                    continue
                runs = []
                for seed in args.seeds:
                    started = time.perf_counter()
                    model, record = unlearn(
                        original, splits, method, tokenizer=tokenizer, progress=False,
                        **{"seed": seed, **overrides.get(method, {})},
                    )
                    seconds = time.perf_counter() - started
                    runs.append({"seed": seed, "seconds": seconds, "steps": record.steps,
                                 "ratio_to_retrain": seconds / retrain_seconds, **evaluate_splits(model, splits, tokenizer)})
                rows.append({**base, "method": method, "config": record.config, **summarise(runs, reference), "runs": runs})
                print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("runs", "config")}), flush=True)

    header = ["geometry", "forget", "method", "test forget %", "- oracle", "test retain %", "- original",
              "train forget %", "steps", "/ retrain"]
    cells = [[row["geometry"], row["forget"], row["method"], spread(row, "zs_test_forget"), cell(row.get("forget_gap"), "+.1f"),
              spread(row, "zs_test_retain"), cell(row.get("retain_gap"), "+.1f"), spread(row, "zs_train_forget"),
              cell(row.get("steps"), ".0f"), cell(row.get("ratio_to_retrain"), ".3f")] for row in rows]
    note = f"Method rows: mean [min, max] over seeds {args.seeds}; gaps of the means."
    write_results(args.out / "results.json", args.out / "table.md", {"rows": rows, "seeds": args.seeds},
                  markdown_table(header, cells, 3) + "\n\n" + note)


FIGURES = ("zs_test_forget", "zs_test_retain", "zs_train_forget", "seconds", "ratio_to_retrain", "steps")


def summarise(runs: list[dict], reference: dict[str, dict]) -> dict:
    """Mean of each figure over the seeds' runs, its range, and the gaps to the oracle and the original."""
    summary = {key: statistics.fmean(run[key] for run in runs) for key in FIGURES}
    summary.update({f"{key}_range": [min(run[key] for run in runs), max(run[key] for run in runs)] for key in FIGURES})
    summary["forget_gap"] = summary["zs_test_forget"] - reference["retrain"]["zs_test_forget"]
    summary["retain_gap"] = summary["zs_test_retain"] - reference["original"]["zs_test_retain"]
    return summary


def spread(row: dict, key: str) -> str:
    """``mean [min, max]`` for a method row over several seeds, else the single value."""
    low, high = row.get(f"{key}_range", (row[key], row[key]))
    return f"{row[key]:.1f}" if low == high else f"{row[key]:.1f} [{low:.1f}, {high:.1f}]"


if __name__ == "__main__":
    main()
