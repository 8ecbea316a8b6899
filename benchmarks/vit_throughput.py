"""Evaluation throughput of our image tower against timm's ViT of the same shape.

Times, under ``torch.inference_mode`` in float32, one batch of random 224x224 images through
``ours ViT`` (the ``VisionTransformer`` of ``--model``, CLS feature out), ``ours encode_image``
(the same ViT plus pixel normalisation, projection and the geometry's embedding: what
evaluation calls) and, when timm can be imported, ``timm ViT`` (``vit_{small,base,large}_patch16_224``
with no classifier head and our number of heads, so the computation is the same). The models
alternate within every round (``--iterations``) after ``--warmup`` untimed batches, so they
see the same machine state. Runs on CPU, and on CUDA when available.

The reported ratio is timm images/s / ours images/s (medians over rounds): above 1 means
timm's ViT is faster. Parameter counts of the two ViTs are compared when timm is present;
otherwise ``"timm"`` records why it could not be imported and only our numbers are reported.

    python benchmarks/vit_throughput.py [--model meru-vit-s] [--batch 32] [--iterations 3] [--out benchmarks/results]

Writes ``vit_throughput.json`` (environment, config, every round's time) and ``vit_throughput.md``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from vlunlearn.models import MODEL_NAMES, build_model, model_config

from _common import cell, interleaved, markdown_table, timer, write_results

NAME = "vit_throughput"
TIMM_NAMES = {"s": "vit_small_patch16_224", "b": "vit_base_patch16_224", "l": "vit_large_patch16_224"}


def timm_vit(name: str, heads: int) -> tuple[nn.Module | None, str]:
    """timm's ViT ``name`` with ``heads`` heads and no classifier, or ``None`` and why not.

    timm (and the torchvision it imports) is imported here only, and any failure to import
    it is reported rather than raised: a broken torchvision build fails with errors other
    than ``ImportError``.
    """
    try:
        import timm
    except Exception as error:  # noqa: BLE001 - see the docstring
        return None, f"not importable: {type(error).__name__}: {error}"
    return timm.create_model(name, pretrained=False, num_classes=0, num_heads=heads), timm.__version__


def parameter_count(module: nn.Module) -> int:
    """Parameter elements, frozen ones included (our sin-cos ``pos_embed`` is a frozen parameter)."""
    return sum(p.numel() for p in module.parameters())


def batch_timer(fn: Callable[[Tensor], Tensor], images: Tensor, warmup: int) -> Callable[[], float]:
    """Run ``fn(images)`` ``warmup`` times; return a measurement giving the seconds of one more call."""
    def run() -> Tensor:
        with torch.inference_mode():
            return fn(images)

    for _ in range(warmup):
        run()
    measured = timer(run)
    return lambda: measured.timeit(1).mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meru-vit-s", choices=[name for name in MODEL_NAMES if name != "tiny"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per model and device")
    parser.add_argument("--iterations", type=int, default=3, help="timed batches (interleaved rounds) per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    config = model_config(args.model)
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    torch.manual_seed(args.seed)
    ours = build_model(args.model).eval()
    timm_name = TIMM_NAMES[args.model[-1]]
    timm_model, timm_status = timm_vit(timm_name, config.vision_heads)
    parameters = {"ours ViT": parameter_count(ours.visual)}
    if timm_model is not None:
        timm_model.eval()
        parameters["timm ViT"] = parameter_count(timm_model)
    print(f"timm: {timm_status}; parameters: {parameters}", flush=True)

    rows = []
    for device in devices:
        ours.to(device)
        images = torch.rand(args.batch, config.in_channels, config.image_size, config.image_size,
                            generator=torch.Generator().manual_seed(args.seed)).to(device)
        normalized = (images - ours.pixel_mean) / ours.pixel_std
        models = {"ours ViT": (ours.visual, normalized), "ours encode_image": (ours.encode_image, images)}
        if timm_model is not None:
            models["timm ViT"] = (timm_model.to(device), normalized)
        measurements = {name: batch_timer(fn, inputs, args.warmup) for name, (fn, inputs) in models.items()}
        seconds = interleaved(measurements, args.iterations)
        throughput = {name: args.batch / statistics.median(times) for name, times in seconds.items()}
        timm_speed = throughput.get("timm ViT")
        for name, times in seconds.items():
            ratio = None if timm_speed is None or name == "timm ViT" else timm_speed / throughput[name]
            rows.append({"device": device, "model": name, "seconds": times, "images_per_second": throughput[name],
                         "timm_over_ours": ratio})
            print(f"{device} {name}: {throughput[name]:.1f} images/s", flush=True)

    header = ["device", "model", "parameters", "images/s", "timm / ours"]
    cells = [[row["device"], row["model"], cell(parameters.get(row["model"]), ",.0f"),
              cell(row["images_per_second"], ".1f"), cell(row["timm_over_ours"], ".2f")] for row in rows]
    table = markdown_table(header, cells, 2) + f"\ntimm: {timm_status}\n"
    run_config = {**{k: v for k, v in vars(args).items() if k != "out"}, "image_size": config.image_size,
                  "dtype": "float32", "devices": devices, "threads": torch.get_num_threads(),
                  "timm_name": timm_name, "heads": config.vision_heads}
    same_parameters = None if timm_model is None else parameters["timm ViT"] == parameters["ours ViT"]
    payload = {"config": run_config, "timm": timm_status, "parameters": parameters,
               "parameters_match": same_parameters, "rows": rows}
    write_results(args.out / f"{NAME}.json", args.out / f"{NAME}.md", payload, table)


if __name__ == "__main__":
    main()
