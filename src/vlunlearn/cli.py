"""The ``vlunlearn`` command line: ``demo``, ``pretrain``, ``unlearn``, ``evaluate``, ``zeroshot``, ``report``,
``study`` and ``molecules``."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from vlunlearn.cli_arguments import (
    RECIPE_HELP,
    add_compute_arguments,
    add_data_arguments,
    add_recipe_arguments,
    add_workers_argument,
    add_zero_shot_arguments,
    data_source,
    key_value,
    stated_recipe,
)
from vlunlearn.errors import RunInterrupted, VlunlearnError
from vlunlearn.runs import save_traceback

EXIT_CODES = """exit codes:
  0    success
  2    bad input: an invalid option, setting, name, file or request (the message says what to fix)
  3    internal error: a bug in vlunlearn; the message names the file with the full traceback
  130  interrupted (Ctrl-C, SIGINT or SIGTERM); pretrain and unlearn continue with --resume"""


def _pretrain_command(args: argparse.Namespace) -> int:
    from vlunlearn.data.sources import default_model
    from vlunlearn.training.pretrain import pretrain_recipe
    from vlunlearn.workflows import pretrain_run

    model = args.model or (None if args.init else default_model(args.data))
    config, start = pretrain_recipe(stated_recipe(args), model=model, geometry=args.geometry, seed=args.seed,
                                    init=args.init)
    record = pretrain_run(
        config, data_source(args), Path(args.out), templates=args.prompt, start=start, resume=args.resume,
        precision=args.precision, grad_checkpointing=args.grad_checkpointing, progress=not args.quiet,
    )
    if not record:  # a distributed run's other ranks: rank 0 reports
        return 0
    metrics = record["metrics"]
    score = (f"zero-shot test top-1 {metrics['zero_shot_test']['micro']:.2f}%" if "zero_shot_test" in metrics
             else f"test image->text R@1 {metrics['retrieval_test']['i2t_r1']:.2f}% (no test item has a class)")
    start_point = f" from {config.init}" if config.init else ""
    for line in record["data"].get("description", ()):  # a user's data: its classes and the hierarchy found
        print(line)
    for warning in record.get("warnings", ()):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config.model}/{config.geometry}{start_point} on {args.data}: {score} -> {args.out}")
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from vlunlearn.demo import demo_run

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    results = demo_run(args.data, out, forget=args.forget, seed=args.seed, progress=not args.quiet, workers=args.workers)
    _print_table(
        results,
        f"Unlearning on built-in {args.data} (zero-shot top-1 on the test split; AP f = detection AP of the forgotten "
        f"concepts; R@1 = test {results['data']['modality']}->text Recall@1; calibrated MIA AUC of D_f vs test-forget; dist. = D_f vs D_r "
        "distinguishability; KS p vs the oracle; gap = alignment gap; /retrain = time / retraining time):",
    )
    print(f"\nReport: {out / 'report.md'}")
    return 0


def _molecules_command(args: argparse.Namespace) -> int:
    import importlib.util

    from vlunlearn.data.chem import molecules_from_table, read_smiles_file, write_molecules
    from vlunlearn.errors import DataError

    if importlib.util.find_spec("rdkit") is None:
        raise DataError("reading SMILES needs RDKit: pip install 'vlunlearn[chem]' (files it wrote read without it)")
    data = molecules_from_table(read_smiles_file(args.smiles), name=Path(args.smiles).stem)
    write_molecules(data, args.out)
    labelled = int((data.labels >= 0).sum())
    print(f"{len(data)} molecules ({labelled} with one functional-group class) -> {args.out}; "
          f"use it as --data or --test-data of pretrain, unlearn and evaluate")
    return 0


def _print_table(results: dict, title: str) -> None:
    from vlunlearn.evaluation.oracle import as_number

    def cell(value, decimals: int, width: int) -> str:
        number = as_number(value)
        return f"{'-' if number is None else f'{number:.{decimals}f}':>{width}}"

    print(f"\n{title}")
    print(f"{'geometry':<10}{'forget':<18}{'method':<13}{'forget %':>9}{'retain %':>9}{'AP f':>7}{'R@1':>6}"
          f"{'MIA AUC [95% CI]':>21}{'dist.':>7}{'KS p':>7}{'gap':>8}{'seconds':>8}{'/retrain':>9}")
    for record in results["records"]:
        m = record["metrics"]
        low, high = as_number(m.get("mia_calibrated_auc_low")), as_number(m.get("mia_calibrated_auc_high"))
        interval = f" [{low:.2f},{high:.2f}]" if low is not None and high is not None else ""
        print(
            f"{record['geometry']:<10}{'+'.join(record['forget']):<18}{record['method']:<13}"
            + cell(m.get("zs_test_forget"), 1, 9) + cell(m.get("zs_test_retain"), 1, 9) + cell(m.get("det_ap_forget"), 2, 7)
            + cell(m.get("retrieval_test_i2t_r1"), 1, 6) + f"{cell(m.get('mia_calibrated_auc'), 3, 6) + interval:>21}"
            + cell(m.get("distinguishability"), 3, 7) + cell(m.get("ks_pvalue"), 3, 7) + cell(m.get("alignment_gap"), 3, 8)
            + cell(m.get("seconds"), 1, 8) + cell(m.get("ratio_to_retrain"), 3, 9)
        )


def _request(args: argparse.Namespace):
    from vlunlearn.data import UnlearningRequest

    if args.forget_ids:
        try:
            sample_ids = tuple(Path(args.forget_ids).read_text().split())
        except OSError as error:
            raise VlunlearnError(f"cannot read --forget-ids {args.forget_ids}: {error.strerror}") from None
    else:
        sample_ids = ()
    return UnlearningRequest(concepts=tuple(args.forget or ()), sample_ids=sample_ids)


def _unlearn_command(args: argparse.Namespace) -> int:
    from vlunlearn.workflows import unlearn_run

    request = _request(args)
    overrides = dict(key_value(item) for item in args.set)
    if args.epochs is not None:  # exactly E passes: no step floor unless --set min_steps=N says so
        overrides = {"min_steps": "1", **overrides, "epochs": str(args.epochs)}
    record = unlearn_run(
        Path(args.checkpoint), data_source(args), request, args.method, Path(args.out), overrides=overrides,
        templates=args.prompt, early_stop_target=args.early_stop, resume=args.resume, precision=args.precision,
        grad_checkpointing=args.grad_checkpointing, sha256=args.sha256, progress=not args.quiet,
    )
    if not record:  # a distributed run's other ranks: rank 0 reports
        return 0
    after = record["metrics"]["unlearned"]

    def percent(key: str) -> str:  # NaN: the data gives that split no class to measure
        value = after.get(key)
        return "not measured" if value is None or math.isnan(value) else f"{value:.1f}%"

    print(
        f"{args.method}: {request.describe()} in {record['run']['steps']} steps "
        f"({record['run']['seconds']:.1f} s); zero-shot test forget {percent('zs_test_forget')}, "
        f"retain {percent('zs_test_retain')} -> {args.out}"
    )
    for warning in record.get("warnings", ()):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _evaluate_command(args: argparse.Namespace) -> int:
    from vlunlearn.workflows import evaluate_run

    request = _request(args) if (args.forget or args.forget_ids) else None
    results = evaluate_run(
        [Path(c) for c in args.checkpoint], data_source(args), Path(args.out), templates=args.prompt, request=request,
        original=Path(args.original) if args.original else None, retrain=Path(args.retrain) if args.retrain else None,
        sha256=args.sha256, seed=args.seed, progress=not args.quiet,
    )
    _print_table(results, f"Evaluation on {args.data} ({results['config']['request']}):")
    print(f"\nReport: {Path(args.out) / 'report.md'}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from vlunlearn.workflows import report_run

    results = report_run([Path(source) for source in args.runs], Path(args.out))
    _print_table(results, f"{len(results['records'])} records from {len(args.runs)} run(s):")
    print(f"\nReport: {Path(args.out) / 'report.md'}")
    return 0


def _zeroshot_command(args: argparse.Namespace) -> int:
    from vlunlearn.workflows import zeroshot_run

    result = zeroshot_run(
        Path(args.checkpoint), Path(args.images), Path(args.out), templates=args.prompt, sha256=args.sha256,
        workers=args.workers,
    )
    accuracy = result["metrics"]["zero_shot"]
    release = result["checkpoint_file"]["release"]
    print(
        f"{result['model']}/{result['geometry']}{f' [{release}]' if release else ''} on {args.images} "
        f"({result['data']['size']} images, {len(result['data']['classes'])} classes): zero-shot top-1 "
        f"macro {accuracy['macro']:.2f}%, micro {accuracy['micro']:.2f}% -> {args.out}"
    )
    return 0


def _study_command(args: argparse.Namespace) -> int:
    from vlunlearn.study import PRESETS, load_spec, preset, run_study

    if args.spec in PRESETS:
        spec = preset(args.spec, quick=args.quick)
    elif Path(args.spec).is_file():
        if args.quick:
            raise VlunlearnError("--quick reduces the presets (hac, multidelete); a study file sets its own grid")
        spec = load_spec(Path(args.spec))
    else:
        raise VlunlearnError(f"{args.spec!r} is neither a preset ({', '.join(PRESETS)}) nor a study file (.toml/.yaml)")
    if args.seeds is not None:
        spec = spec.with_seeds(args.seeds)
    parameters = {key: _number_or_text(value) for key, value in map(key_value, args.slurm)}
    counts = run_study(spec, Path(args.out), jobs=args.jobs, executor=args.executor, progress=not args.quiet,
                       executor_parameters=parameters)
    if counts["failed"]:  # recorded and reported: a study with failed cells still completes
        print(f"vlunlearn: {counts['failed']} cell(s) failed (see {Path(args.out) / 'cells'}/*/failed.json); "
              "rerun the same command to retry them", file=sys.stderr)
    return 0


def _number_or_text(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _methods_help() -> str:
    from vlunlearn.methods import method_summaries

    width = max(len(name) for name, _, _ in method_summaries())
    lines = [f"  {name:<{width}}  {summary}\n  {'':<{width}}  default budget: {budget}"
             for name, summary, budget in method_summaries()]
    oracle = (f"  {'retrain':<{width}}  the oracle: pretrain on D_r with the recipe recorded in the checkpoint (from\n"
              f"  {'':<{width}}  scratch, or from its --init checkpoint); a checkpoint without one needs it stated:\n"
              f"  {'':<{width}}  --set steps=N --set lr=X ... (the rest: the pretrain defaults)")
    return "methods (--method; settings with --set KEY=VALUE):\n" + "\n".join(lines + [oracle])


def build_parser() -> argparse.ArgumentParser:
    from vlunlearn.data.builtin import BUILTIN_DATASETS

    parser = argparse.ArgumentParser(
        prog="vlunlearn", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="pretrain tiny CLIP and MERU, retrain the oracles, unlearn a concept with every method, report"
    )
    demo.add_argument("--out", help="run folder (default: runs/demo-<time>)")
    demo.add_argument("--data", default="fashion-scenes", choices=BUILTIN_DATASETS)
    demo.add_argument("--forget", nargs="+", metavar="CONCEPT",
                      help="concept(s) to forget, one request (default: sneaker; seven on digits; on molecules "
                      "two requests, nitro group, then aldehyde + carboxylic acid)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, choices=(1, 2), help="processes: 2 runs CLIP and MERU side by side "
                      "(default where there are two cores or more)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo_command)

    molecules = commands.add_parser(
        "molecules", help="turn a SMILES file (CSV/TSV with smiles, caption, id columns, or .smi) into graph-text pairs",
        description="Read molecules (a CSV/TSV with a `smiles` column and optional `caption` and `id` columns, or a\n"
        ".smi file of `SMILES [id]` lines), find their functional groups (the concepts of the built-in\n"
        "molecules hierarchy) and write graph-text pairs to a .npz file that pretrain, unlearn and evaluate\n"
        "read as --data / --test-data. A row without a caption gets a generated one. Needs RDKit\n"
        "(pip install 'vlunlearn[chem]').", formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    molecules.add_argument("smiles", metavar="SMILES_FILE")
    molecules.add_argument("--out", required=True, help="new .npz file (never overwritten)")
    molecules.set_defaults(func=_molecules_command)

    pretrain = commands.add_parser(
        "pretrain", help="pretrain a model from scratch, or fine-tune one (--init), on built-in or your own data",
        description="Pretrain a model from scratch, or fine-tune an existing one (--init), on built-in data or your\n"
        "own (an annotation file, a tar shard or a folder of shards, with --test-data), and evaluate it on\n"
        "the test split. Users' images are read at the model's input size.",
        epilog=RECIPE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_recipe_arguments(pretrain)
    add_data_arguments(pretrain)
    add_zero_shot_arguments(pretrain)
    pretrain.add_argument("--out", required=True, help="new run folder")
    pretrain.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_compute_arguments(pretrain)
    pretrain.add_argument("--quiet", action="store_true", help="no progress bars")
    pretrain.set_defaults(func=_pretrain_command)

    unlearn = commands.add_parser(
        "unlearn", help="make a trained model forget concepts or samples", epilog=_methods_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    unlearn.add_argument("--checkpoint", required=True, help="model folder or MERU-format .pth (never modified)")
    add_data_arguments(unlearn)
    add_zero_shot_arguments(unlearn)
    unlearn.add_argument("--forget", action="append", metavar="CONCEPT", help="concept to forget (repeatable)")
    unlearn.add_argument("--forget-ids", metavar="FILE", help="file of training sample ids to forget, one per line")
    unlearn.add_argument("--method", default="hac", help="unlearning method (listed below), or 'retrain' for the oracle")
    unlearn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a method setting (for --method retrain: a recipe field, e.g. steps=200)")
    unlearn.add_argument("--epochs", type=float, help="budget: exactly E passes over D_f (--set epochs=E keeps the method's floor of min_steps)")
    unlearn.add_argument("--early-stop", type=float, metavar="PERCENT", help="stop when accuracy on a held-out fifth of D_f (at most 256 pairs, not trained on) falls to this")
    unlearn.add_argument("--out", required=True, help="new run folder")
    unlearn.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    unlearn.add_argument("--sha256", help="expected SHA-256 of the checkpoint file (checked before loading)")
    add_compute_arguments(unlearn)
    unlearn.add_argument("--quiet", action="store_true", help="no progress bars")
    unlearn.set_defaults(func=_unlearn_command)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate unlearned models against the original and the retrained oracle; write a report"
    )
    evaluate.add_argument(
        "--checkpoint", action="append", required=True, metavar="PATH",
        help="unlearned model folder or .pth (repeatable; labelled by the method recorded in it)",
    )
    evaluate.add_argument("--original", metavar="PATH", help="the model before unlearning (default: the one recorded)")
    evaluate.add_argument("--retrain", metavar="PATH", help="the retrained oracle (default: none, or a --checkpoint "
                          "made with --method retrain)")
    add_data_arguments(evaluate)
    add_zero_shot_arguments(evaluate)
    evaluate.add_argument("--forget", action="append", metavar="CONCEPT", help="default: the request recorded")
    evaluate.add_argument("--forget-ids", metavar="FILE", help="file of training sample ids, one per line")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the audit and MIA samples")
    evaluate.add_argument("--sha256", action="append", help="expected SHA-256 of each --checkpoint file, in order")
    evaluate.add_argument("--out", required=True, help="new run folder")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=_evaluate_command)

    zeroshot = commands.add_parser("zeroshot", help="zero-shot accuracy on an ImageFolder-style class folder")
    zeroshot.add_argument("--checkpoint", required=True, help="model folder or MERU-format .pth")
    zeroshot.add_argument("--images", required=True, metavar="DIR", help="one sub-folder of images per class")
    zeroshot.add_argument("--prompt", action="append", metavar="TEMPLATE", help="prompt template with {} for the "
                          "class name (repeatable; default: generic templates)")
    zeroshot.add_argument("--sha256", help="expected SHA-256 of the checkpoint file")
    add_workers_argument(zeroshot)
    zeroshot.add_argument("--out", required=True, help="new run folder")
    zeroshot.set_defaults(func=_zeroshot_command)

    report = commands.add_parser("report", help="one report from the results of finished runs")
    report.add_argument("runs", nargs="+", metavar="RUN", help="run folder or results.json (demo, evaluate, unlearn)")
    report.add_argument("--out", required=True, help="new report folder")
    report.set_defaults(func=_report_command)

    study = commands.add_parser(
        "study", help="a grid of unlearning runs over geometries, methods, requests and seeds, with its claims checked",
        description="Run a study: a preset (hac, multidelete) or a .toml/.yaml study file (see vlunlearn.study.spec). "
        "Rerunning the same command resumes it: finished cells are skipped, failed ones retried.",
    )
    study.add_argument("spec", metavar="PRESET_OR_FILE", help="hac, multidelete, or a study file")
    study.add_argument("--out", required=True, help="study folder (created, or resumed when it holds the same study)")
    study.add_argument("--seeds", type=int, metavar="N", help="use the seeds 0..N-1 instead of the study's")
    study.add_argument("--quick", action="store_true", help="a preset's reduced grid (2 seeds, short recipe): a smoke run")
    study.add_argument("--jobs", type=int, default=1, metavar="N", help="local worker processes (default 1)")
    study.add_argument("--executor", choices=("local", "slurm"), default="local",
                       help="local processes, or SLURM through submitit (pip install 'vlunlearn[cluster]')")
    study.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                       help="a submitit parameter for --executor slurm, e.g. timeout_min=120 or slurm_partition=cpu")
    study.add_argument("--quiet", action="store_true", help="no progress lines")
    study.set_defaults(func=_study_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vlunlearn.training import distributed

    # PyTorch backs CPU tensors of 2 MiB and more with transparent huge pages when this is set
    # before its first such allocation: a fresh (4096, 4096) buffer then costs 3 ms instead of 22
    # to touch, and the contrastive loss at batch 4096 runs 1.2-1.3x faster. Linux only; a
    # user's own value wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("pretrain", "unlearn") and distributed.init_from_env() and not distributed.is_main():
            args.quiet = True
        return args.func(args)
    except RunInterrupted as interruption:
        print(f"vlunlearn: interrupted: {interruption}", file=sys.stderr)
        return 130
    except VlunlearnError as error:
        print(f"vlunlearn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlunlearn: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130
    except Exception as error:
        saved = save_traceback(getattr(args, "out", None))
        print(f"vlunlearn: internal error (this is a bug, please report it): {type(error).__name__}: {error}\n"
              f"vlunlearn: the full traceback is saved in {saved}", file=sys.stderr)
        return 3
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
