"""Argument groups that several ``vlunlearn`` commands share, and what they turn into."""

from __future__ import annotations

import argparse

from vlunlearn.errors import VlunlearnError

RECIPE_HELP = """recipe (recorded in the model; `unlearn --method retrain` repeats it on D_r):
  from scratch      PretrainConfig's defaults for every data form: 468 steps of 256 pairs, AdamW lr 2e-3
                    (warm-up over the first 10%, then cosine), weight decay 0.2, entailment weight 0.2
                    (Lorentz), captions drawn generic/family/class with weights 0.1/0.2/0.7 where an item
                    has those three levels (else its own caption)
  with --init       the same, with lr 1e-5: a pretrained model's features are worth keeping, and a
                    from-scratch rate overwrites them within a few steps
  --steps, --batch-size, --lr and --set KEY=VALUE (any other PretrainConfig field) change it"""


def key_value(item: str) -> tuple[str, str]:
    """``"key=value"`` as ``(key, value)``, stripped."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise VlunlearnError(f"--set expects key=value, got {item!r}")
    return key.strip(), value.strip()


def class_list(text: str) -> tuple[str, ...]:
    """The names of ``--classes NAME[,NAME...]``."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected class names separated by commas, got {text!r}")
    return names


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="processes that decode users' images (default 0: decode in this process)")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --test-data, --hierarchy, --level-captions and --workers."""
    from vlunlearn.data.builtin import BUILTIN_DATASETS

    parser.add_argument(
        "--data", metavar="NAME|FILE",
        help=f"a built-in dataset ({', '.join(BUILTIN_DATASETS)}), an annotation file (CSV/JSONL: path, caption, "
        "concepts, id; image paths relative to its folder), a WebDataset tar shard, a folder of shards or a .npz "
        "of molecules (vlunlearn molecules); default: the data the checkpoint was trained on, else fashion-mnist",
    )
    parser.add_argument("--test-data", metavar="PATH", help="the held-out split of a user's --data, in the same form")
    parser.add_argument("--hierarchy", metavar="FILE", help="a user's concept hierarchy: child -> parent (CSV with "
                        "header child,parent, or JSON {child: parent})")
    parser.add_argument("--level-captions", action="store_true",
                        help="give a user's items a caption at every level of the hierarchy (their own caption last)")
    add_workers_argument(parser)


def add_zero_shot_arguments(parser: argparse.ArgumentParser) -> None:
    """--prompt and --classes: how zero-shot evaluation names and ranks the classes."""
    parser.add_argument("--prompt", action="append", metavar="TEMPLATE", help="zero-shot prompt template with {} "
                        "for the class name (repeatable; default: the data's hierarchy templates, else generic ones)")
    parser.add_argument("--classes", type=class_list, metavar="NAME[,NAME...]",
                        help="the classes zero-shot evaluation ranks (an item's class: the one of them it shows; "
                        "default: every class of the data)")


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
        help="mixed precision for training (the Lorentz operations always run in float32)",
    )
    parser.add_argument(
        "--grad-checkpointing", action="store_true", help="recompute activations in backward (less memory, for ViT-L)"
    )


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and recipe of ``pretrain`` (see :data:`RECIPE_HELP`)."""
    parser.add_argument("--model", help="model configuration (default: tiny, or tiny-graph for molecules; with --init, "
                        "the checkpoint's)")
    parser.add_argument("--geometry", choices=("euclidean", "lorentz"),
                        help="default: lorentz for meru-* models, else euclidean; with --init, the checkpoint's")
    parser.add_argument("--init", metavar="CHECKPOINT", help="fine-tune this model folder or MERU/CLIP .pth "
                        "(its path and SHA-256 are recorded) instead of starting from a random initialisation")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="pairs per step (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other recipe field, e.g. warmup_fraction=0.05 or weight_decay=0.1")
    parser.add_argument("--seed", type=int, default=0)


def stated_recipe(args: argparse.Namespace) -> dict[str, object]:
    """The recipe fields given on the command line (``--set`` first, the named flags over it)."""
    flags = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    return {**dict(map(key_value, args.set)), **{k: v for k, v in flags.items() if v is not None}}


def data_source(args: argparse.Namespace):
    """The :class:`~vlunlearn.data.sources.DataSource` of a command's data and zero-shot arguments."""
    from vlunlearn.data.sources import DataSource

    if args.data is None:  # the data the (first) checkpoint records, as its pretraining or unlearning run named it
        args.data, args.test_data = _recorded_data(args)
    return DataSource(args.data, test_data=args.test_data, hierarchy=args.hierarchy, level_captions=args.level_captions,
                      classes=getattr(args, "classes", None), workers=args.workers)


def _recorded_data(args: argparse.Namespace) -> tuple[str, str | None]:
    """``(data, test data)`` recorded in the metadata of the command's model folder (``--checkpoint``,
    the first one when several, or ``--init``); ``("fashion-mnist", --test-data)`` without one."""
    from vlunlearn.errors import CheckpointError
    from vlunlearn.models import read_metadata

    checkpoint = getattr(args, "checkpoint", None) or getattr(args, "init", None)
    if isinstance(checkpoint, list):
        checkpoint = checkpoint[0] if checkpoint else None
    try:
        recorded = read_metadata(checkpoint).get("data") or {} if checkpoint else {}
    except CheckpointError:  # a MERU .pth or another file without vlunlearn metadata
        recorded = {}
    if isinstance(recorded.get("name"), str):
        return recorded["name"], args.test_data or recorded.get("test_data")
    return "fashion-mnist", args.test_data
