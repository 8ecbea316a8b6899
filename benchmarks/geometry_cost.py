"""Cost of hyperbolic (Lorentz) against Euclidean (cosine) similarity in contrastive training.

For each batch size B, three ops are timed with ``torch.utils.benchmark.Timer``:
``similarity``, the ``(B, B)`` pairwise similarity matrix (cosine, or negative geodesic
distance with curvature c = 1); ``loss``, the symmetric contrastive loss forward and
backward to both embedding batches; and ``loss, learned scale and c``, the same with the
gradients of the logit scale and (Lorentz) the curvature, as in pretraining. Cosine inputs
are unit vectors; Lorentz inputs are ``exp_map0`` of random tangent vectors of norm about 1.
The two geometries alternate within every round (``--rounds``), so both see the same machine
state; a round's value is the median of a ``blocked_autorange``. Runs on CPU in float32, and
on CUDA when available in float32 and in bf16 autocast (``--precisions``).

The reported ratio is Lorentz time / cosine time, the median over rounds of the ratio within
each round: 1.5 means the hyperbolic op takes 50% longer. Absolute times depend on the
machine and its load; compare ratios.

    python benchmarks/geometry_cost.py [--batches 256 512 1024 2048 4096] [--precisions fp32 bf16] [--out benchmarks/results]

Writes ``geometry_cost.json`` (environment, config, every round's times) and ``geometry_cost.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor

from vlunlearn.geometry import EUCLIDEAN, LORENTZ, Geometry, euclidean, lorentz
from vlunlearn.training.losses import contrastive_loss

from _common import interleaved, markdown_table, timer, write_results

NAME = "geometry_cost"
CURVATURE = 1.0


def embeddings(geometry: Geometry, batch: int, dim: int, device: str, generator: torch.Generator) -> Tensor:
    """A batch of points of ``geometry``: unit vectors, or ``exp_map0`` of tangent vectors of norm ~1."""
    tangent = torch.randn(batch, dim, generator=generator) * dim**-0.5
    points = lorentz.exp_map0(tangent, CURVATURE) if geometry.hyperbolic else euclidean.normalize(tangent)
    return points.to(device)


def ops(geometry: Geometry, batch: int, dim: int, device: str, precision: str, seed: int) -> dict[str, Callable[[], object]]:
    """The timed closures of one geometry: the similarity matrix; the loss forward + backward to
    the embeddings; and the same with the gradients of the logit scale and the curvature, which
    pretraining learns. In ``bf16`` the embeddings are bfloat16 (as towers under autocast give
    them) and every op runs under bf16 autocast, the Lorentz ones in float32 as the library runs them."""
    generator = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    image = embeddings(geometry, batch, dim, device, generator).to(dtype).requires_grad_(True)
    text = embeddings(geometry, batch, dim, device, generator).to(dtype).requires_grad_(True)

    def model(learned: bool) -> SimpleNamespace:
        """The three attributes contrastive_loss reads from a model, and nothing else."""
        curvature = torch.tensor(CURVATURE, device=device, requires_grad=learned) if geometry.hyperbolic else None
        scale = torch.tensor(math.log(1 / 0.07), device=device, requires_grad=learned)
        return SimpleNamespace(geometry=geometry, curvature=lambda: curvature, logit_scale=scale)

    fixed, learned = model(False), model(True)
    learned_wrt = (image, text, learned.logit_scale) + ((learned.curvature(),) if geometry.hyperbolic else ())

    def autocast() -> torch.autocast:
        return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")

    def similarity() -> Tensor:
        with torch.no_grad(), autocast():
            return geometry.pairwise_similarity(image, text, fixed.curvature())

    def loss() -> tuple[Tensor, ...]:
        with autocast():
            return torch.autograd.grad(contrastive_loss(fixed, image, text), (image, text))

    def loss_learned() -> tuple[Tensor, ...]:
        with autocast():
            return torch.autograd.grad(contrastive_loss(learned, image, text), learned_wrt)

    return {"similarity": similarity, "loss": loss, "loss, learned scale and c": loss_learned}


def autorange(fn: Callable[[], object], min_run_time: float) -> Callable[[], float]:
    """Warm ``fn`` up once; return a measurement giving the median seconds of a ``blocked_autorange``."""
    fn()
    measured = timer(fn)
    return lambda: measured.blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved measurements per geometry and op")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per blocked_autorange")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"),
                        help="default: fp32 on the CPU, fp32 and bf16 (autocast) on CUDA")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]

    rows = []
    for device in devices:
        for precision in args.precisions or (["fp32"] if device == "cpu" else ["fp32", "bf16"]):
            for batch in args.batches:
                closures = {g.name: ops(g, batch, args.dim, device, precision, args.seed) for g in (EUCLIDEAN, LORENTZ)}
                for op in closures["euclidean"]:
                    measurements = {name: autorange(fns[op], args.min_run_time) for name, fns in closures.items()}
                    seconds = interleaved(measurements, args.rounds)
                    ratios = [h / e for h, e in zip(seconds["lorentz"], seconds["euclidean"])]
                    rows.append({"device": device, "precision": precision, "op": op, "batch": batch,
                                 "seconds": seconds, "ratio": statistics.median(ratios)})
                    print(f"{device} {precision} {op} B={batch}: lorentz/cosine {rows[-1]['ratio']:.2f}", flush=True)

    header = ["device", "precision", "op", "batch", "cosine ms", "lorentz ms", "lorentz / cosine"]
    cells = [[row["device"], row["precision"], row["op"], row["batch"],
              f"{1e3 * statistics.median(row['seconds']['euclidean']):.2f}",
              f"{1e3 * statistics.median(row['seconds']['lorentz']):.2f}", f"{row['ratio']:.2f}"] for row in rows]
    config = {**{k: v for k, v in vars(args).items() if k != "out"}, "curvature": CURVATURE,
              "devices": devices, "threads": torch.get_num_threads(),
              "float32_matmul_precision": torch.get_float32_matmul_precision()}
    write_results(args.out / f"{NAME}.json", args.out / f"{NAME}.md", {"config": config, "rows": rows},
                  markdown_table(header, cells, 3))


if __name__ == "__main__":
    main()
