"""Forget/retain zero-shot accuracy and wall time of every method against the retrain oracle.

For each geometry (CLIP, MERU) the tiny model is pretrained on the built-in data (or
read from ``--cache``), then for each request the oracle is retrained on D_r and every
method unlearns the original. Writes ``table.md`` and ``results.json`` to ``--out``;
the wall-time column is each method's ratio to retraining, measured in the same run.

    python benchmarks/unlearning_table.py --out runs/table [--cache runs/table-cache]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vlunlearn import unlearn
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
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
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help="folder to keep pretrained and retrained models in")
    parser.add_argument("--requests", nargs="+", default=["sneaker", "sneaker,bag,coat"])
    parser.add_argument("--geometries", nargs="+", default=["euclidean", "lorentz"])
    parser.add_argument("--methods", nargs="+", help="subset of methods (default: all)")
    parser.add_argument("--set", nargs="*", default=[], help="method=key=value overrides")
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
        recipe = PretrainConfig(geometry=geometry)

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
            for method in args.methods or GEOMETRY_METHODS[geometry]:
                if method not in GEOMETRY_METHODS[geometry]:
                    continue
                started = time.perf_counter()
                model, record = unlearn(
                    original, splits, method, tokenizer=tokenizer, progress=False, **overrides.get(method, {})
                )
                seconds = time.perf_counter() - started
                rows.append({**base, "method": method, "seconds": seconds, "steps": record.steps,
                             "ratio_to_retrain": seconds / retrain_seconds, **evaluate_splits(model, splits, tokenizer)})
                print(json.dumps(rows[-1]), flush=True)

    header = ["geometry", "forget", "method", "test forget %", "test retain %", "train forget %", "seconds", "/ retrain"]
    cells = [[row["geometry"], row["forget"], row["method"], f"{row['zs_test_forget']:.1f}",
              f"{row['zs_test_retain']:.1f}", f"{row['zs_train_forget']:.1f}", f"{row['seconds']:.1f}",
              cell(row.get("ratio_to_retrain"), ".3f")] for row in rows]
    write_results(args.out / "results.json", args.out / "table.md", {"rows": rows}, markdown_table(header, cells, 3))


if __name__ == "__main__":
    main()
