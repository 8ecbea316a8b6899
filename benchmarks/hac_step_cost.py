"""Cost of one HAC step against one plain contrastive step, and of the NaN-recovery snapshot.

Meant for a CUDA device (the default: ``meru-vit-l``, 256 pairs per step, bf16 autocast with the
Lorentz operations in float32); ``--device cpu`` with a small model is its dry run. Both methods
run through ``vlunlearn.unlearn`` on synthetic pairs at the model's input size (random pixels and
captions of four concepts; the costs do not depend on what the pixels show):

- ``contrastive``: ``finetune``, the plain contrastive loss on ``--batch`` retain pairs;
- ``hac``: the default HAC on ``--batch`` pairs per step as well (``--forget-share`` of them from
  D_f, the rest from D_r), which also encodes its batches with the frozen original (norm
  regularisation and calibration targets).

A step's time is the difference between a run of ``--warmup + --steps`` steps and one of
``--warmup`` steps, divided by ``--steps`` (set-up, copies and the first steps' allocations cancel),
after a discarded first run (one-time costs: the tokenizer, kernels, the allocator's first growth).
Peak memory (``vlunlearn.evaluation.oracle.peak_memory``): ``torch.cuda.max_memory_allocated`` of
the longer run on CUDA, the rise of the process's resident memory on CPU. Snapshot: the time and host bytes of one NaN-recovery copy of the
model and its AdamW state (``vlunlearn.training.loop._snapshot``) and the default interval for the
model (``snapshot_interval``), as a share of a contrastive step.

    python benchmarks/hac_step_cost.py                                   # on a GPU: meru-vit-l, 256, bf16
    python benchmarks/hac_step_cost.py --device cpu --model tiny --batch 64 --precision fp32 --steps 20  # dry run

Writes ``hac_step_cost_<device>.json`` (environment, config, raw numbers) and ``.md``. Target:
hac / contrastive <= 1.3 on the GPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vlunlearn import unlearn
from vlunlearn.data import PairDataset, Tokenizer, UnlearningRequest, make_splits
from vlunlearn.evaluation.oracle import peak_memory
from vlunlearn.models import build_model
from vlunlearn.training.loop import OptimConfig, snapshot_interval

from _common import markdown_table, snapshot_cost, write_results

NAME = "hac_step_cost"
CONCEPTS = ("cat", "dog", "bird", "fish")
MB = 2**20


def synthetic_pairs(model, count: int, seed: int) -> PairDataset:
    """``count`` random images at the model's input size with captions of :data:`CONCEPTS`."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, config.in_channels, config.image_size, config.image_size),
                           dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % len(CONCEPTS)
    return PairDataset(
        name=f"synthetic-{seed}", inputs=images, labels=labels, class_names=CONCEPTS,
        captions=[(f"a photo of a {CONCEPTS[k]}, number {i}.",) for i, k in enumerate(labels.tolist())],
        concepts=[frozenset({CONCEPTS[k]}) for k in labels.tolist()], ids=[f"{seed}/{i}" for i in range(count)],
    )


def run(model, splits, method: str, steps: int, batches: dict, precision: str, device: str) -> tuple[float, float]:
    """``(seconds, peak MB)`` of ``steps`` steps of ``method`` (CUDA's peak, or the CPU peak rise)."""
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with peak_memory() as peak:
        unlearn(model, splits, method, tokenizer=Tokenizer(), progress=False, precision=precision, steps=steps, **batches)
        if device == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - started, (peak.peak_bytes or 0) / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meru-vit-l")
    parser.add_argument("--batch", type=int, default=256, help="pairs per step through the trained model")
    parser.add_argument("--forget-share", type=float, default=0.25, help="HAC: share of a step's pairs from D_f")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps before measuring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = build_model(args.model, "lorentz").to(args.device)
    forget = max(1, round(args.batch * args.forget_share))
    train = synthetic_pairs(model, 4 * args.batch, args.seed)
    splits = make_splits(train, synthetic_pairs(model, len(CONCEPTS), args.seed + 1), UnlearningRequest(concepts=("cat",)))
    batches = {
        "contrastive": ("finetune", {"retain_batch_size": args.batch}),
        "hac": ("hac", {"retain_batch_size": args.batch - forget, "forget_batch_size": forget}),
    }
    rows = {}
    for name, (method, sizes) in batches.items():
        run(model, splits, method, args.warmup, sizes, args.precision, args.device)  # first-call costs, discarded
        short, _ = run(model, splits, method, args.warmup, sizes, args.precision, args.device)
        long, peak = run(model, splits, method, args.warmup + args.steps, sizes, args.precision, args.device)
        rows[name] = {"method": method, "batches": sizes, "step_seconds": (long - short) / args.steps, "peak_mb": peak}
        print(f"{name}: {rows[name]['step_seconds']:.3f} s/step, peak {peak:.0f} MB", flush=True)
    snapshot_seconds, snapshot_mb = snapshot_cost(model)
    interval = snapshot_interval(OptimConfig(steps=1, lr=1e-6), model)
    contrastive = rows["contrastive"]["step_seconds"]
    ratio = rows["hac"]["step_seconds"] / contrastive

    header = ["model", "device", "precision", "batch", "step", "seconds / step", "/ contrastive", "peak MB"]
    cells = [[args.model, args.device, args.precision, args.batch, name, f"{row['step_seconds']:.3f}",
              f"{row['step_seconds'] / contrastive:.2f}", f"{row['peak_mb']:.0f}"] for name, row in rows.items()]
    table = markdown_table(header, cells, 5) + (
        f"\nNaN-recovery snapshot: {snapshot_seconds:.3f} s and {snapshot_mb:.0f} MB of host memory per copy "
        f"({snapshot_seconds / contrastive:.2f} of a contrastive step); default interval for this model: every "
        f"{interval} step{'s' if interval > 1 else ''}, {snapshot_seconds / contrastive / interval:.3f} of a step "
        "on average.\n")
    config = {**{k: v for k, v in vars(args).items() if k != "out"}, "threads": torch.get_num_threads(),
              "parameters": model.num_parameters()}
    write_results(args.out / f"{NAME}_{args.device}.json", args.out / f"{NAME}_{args.device}.md",
                  {"config": config, "rows": rows, "hac_over_contrastive": ratio,
                   "snapshot": {"seconds": snapshot_seconds, "host_mb": snapshot_mb, "default_interval": interval}},
                  table)


if __name__ == "__main__":
    main()
