"""The ``vlunlearn`` command line: ``demo``, ``pretrain`` and ``unlearn``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlunlearn.errors import VlunlearnError


def _pretrain_command(args: argparse.Namespace) -> int:
    from vlunlearn.training.pretrain import PretrainConfig
    from vlunlearn.workflows import pretrain_run

    geometry = args.geometry or ("lorentz" if args.model.startswith("meru") else "euclidean")
    config = PretrainConfig(model=args.model, geometry=geometry, seed=args.seed, **_steps(args))
    record = pretrain_run(config, args.data, Path(args.out), resume=args.resume, progress=not args.quiet)
    accuracy = record["metrics"]["zero_shot_test"]["micro"]
    print(f"{args.model}/{geometry} on {args.data}: zero-shot test top-1 {accuracy:.2f}% -> {args.out}")
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from vlunlearn.workflows import demo_run

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    results = demo_run(args.data, out, seed=args.seed, progress=not args.quiet)
    print(f"\nUnlearning on built-in {args.data} (zero-shot top-1 on the test split, MIA AUC on D_f vs test):")
    print(f"{'geometry':<10}{'forget':<20}{'method':<14}{'forget %':>9}{'retain %':>9}{'MIA AUC':>9}{'seconds':>9}{'/retrain':>9}")
    for record in results["records"]:
        m = record["metrics"]
        ratio = f"{m['ratio_to_retrain']:.3f}" if "ratio_to_retrain" in m else ""
        print(
            f"{record['geometry']:<10}{'+'.join(record['forget']):<20}{record['method']:<14}{m['zs_test_forget']:>9.1f}"
            f"{m['zs_test_retain']:>9.1f}{m['mia_auc']:>9.3f}{m['seconds']:>9.1f}{ratio:>9}"
        )
    print(f"\nReport: {out / 'report.md'}")
    return 0


def _unlearn_command(args: argparse.Namespace) -> int:
    from vlunlearn.data import UnlearningRequest
    from vlunlearn.workflows import unlearn_run

    sample_ids = tuple(Path(args.forget_ids).read_text().split()) if args.forget_ids else ()
    request = UnlearningRequest(concepts=tuple(args.forget or ()), sample_ids=sample_ids)
    overrides = dict(_key_value(item) for item in args.set)
    record = unlearn_run(
        Path(args.checkpoint), args.data, request, args.method, Path(args.out),
        overrides=overrides, epochs=args.epochs, early_stop_target=args.early_stop, progress=not args.quiet,
    )
    after = record["metrics"]["unlearned"]
    print(
        f"{args.method}: forgot {request.describe()} in {record['run']['steps']} steps "
        f"({record['run']['seconds']:.1f} s); zero-shot test forget {after['zs_test_forget']:.1f}%, "
        f"retain {after['zs_test_retain']:.1f}% -> {args.out}"
    )
    return 0


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise VlunlearnError(f"--set expects key=value, got {item!r}")
    return key.strip(), value.strip()


def _steps(args: argparse.Namespace) -> dict:
    return {} if args.steps is None else {"steps": args.steps}


def build_parser() -> argparse.ArgumentParser:
    from vlunlearn.data.builtin import BUILTIN_DATASETS

    parser = argparse.ArgumentParser(prog="vlunlearn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="pretrain tiny CLIP and MERU, unlearn one and three concepts with every method, report"
    )
    demo.add_argument("--out", help="run folder (default: runs/demo-<time>)")
    demo.add_argument("--data", default="fashion-mnist", choices=BUILTIN_DATASETS)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo_command)

    pretrain = commands.add_parser("pretrain", help="pretrain a model from scratch on built-in data")
    pretrain.add_argument("--model", default="tiny")
    pretrain.add_argument(
        "--geometry", choices=("euclidean", "lorentz"), help="default: lorentz for meru-* models, else euclidean"
    )
    pretrain.add_argument("--data", default="fashion-mnist", choices=BUILTIN_DATASETS)
    pretrain.add_argument("--out", required=True, help="new run folder")
    pretrain.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bars")
    pretrain.set_defaults(func=_pretrain_command)

    unlearn = commands.add_parser("unlearn", help="make a trained model forget concepts or samples")
    unlearn.add_argument("--checkpoint", required=True, help="model folder or MERU-format .pth (never modified)")
    unlearn.add_argument("--data", default="fashion-mnist", choices=BUILTIN_DATASETS)
    unlearn.add_argument("--forget", action="append", metavar="CONCEPT", help="concept to forget (repeatable)")
    unlearn.add_argument("--forget-ids", metavar="FILE", help="file of training sample ids to forget, one per line")
    unlearn.add_argument("--method", default="hac", help="unlearning method, or 'retrain' for the oracle")
    unlearn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a method setting")
    unlearn.add_argument("--epochs", type=float, help="budget in passes over D_f (instead of the method's steps)")
    unlearn.add_argument("--early-stop", type=float, metavar="PERCENT", help="stop when D_f accuracy falls to this")
    unlearn.add_argument("--out", required=True, help="new run folder")
    unlearn.add_argument("--quiet", action="store_true", help="no progress bars")
    unlearn.set_defaults(func=_unlearn_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (VlunlearnError, ValueError) as error:
        print(f"vlunlearn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlunlearn: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
