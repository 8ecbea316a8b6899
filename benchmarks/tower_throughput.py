"""Throughput of our image and text towers against timm's and open_clip's of the same shape.

Image: our ``VisionTransformer`` of ``--model`` (CLS feature out) against timm's
``vit_{small,base,large}_patch16_224`` with no classifier head and our number of heads; text:
our ``TextTransformer`` (pooled at the end-of-text token) against open_clip's
``TextTransformer`` of the same width, depth, heads and context, without its projection. Two
modes: ``forward`` (``torch.inference_mode``, eval) and ``forward+backward`` (train mode, the
gradient of the features' sum). The towers alternate within every round (``--iterations``) after
``--warmup`` untimed batches, so they see the same machine state; float32, CPU, and CUDA when
available.

timm and open_clip import torchvision, whose PyPI build needs CUDA: where it fails to import, the
benchmark installs a stand-in (``_torchvision_standin.py``; a ViT and a text transformer use no
torchvision operator). They are imported by this script only, never by the library; install
them beside it (``pip install --no-deps timm open_clip_torch``). Missing ones are reported, not
raised.

The ratio is ours / reference in items per second (medians over rounds): at least 1.0 means our
tower is as fast. Parameter counts are compared.

    python benchmarks/tower_throughput.py [--model meru-vit-s] [--batch 32] [--iterations 3] [--out benchmarks/results]

Writes ``tower_throughput.json`` (environment, config, every round's time) and ``tower_throughput.md``.
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
from _torchvision_standin import install as install_torchvision

NAME = "tower_throughput"
TIMM_NAMES = {"s": "vit_small_patch16_224", "b": "vit_base_patch16_224", "l": "vit_large_patch16_224"}


def reference_towers(config) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """timm's ViT and open_clip's text transformer shaped like ``config``'s towers, with the
    status (version, or why not) of each library."""
    towers, status = {}, {"torchvision": install_torchvision()}
    try:
        import timm

        towers["image"] = timm.create_model(TIMM_NAMES[config.name[-1]], pretrained=False, num_classes=0,
                                            num_heads=config.vision_heads)
        status["timm"] = timm.__version__
    except Exception as error:  # noqa: BLE001 - a broken import fails with errors other than ImportError
        status["timm"] = f"not importable: {type(error).__name__}: {error}"
    try:
        import open_clip
        from open_clip.transformer import TextTransformer

        towers["text"] = TextTransformer(context_length=config.context_length, vocab_size=config.vocab_size,
                                         width=config.text_width, heads=config.text_heads, layers=config.text_depth,
                                         output_dim=None)
        status["open_clip"] = open_clip.__version__
    except Exception as error:  # noqa: BLE001
        status["open_clip"] = f"not importable: {type(error).__name__}: {error}"
    return towers, status


def measurement(tower: nn.Module, inputs: Tensor, backward: bool, warmup: int) -> Callable[[], float]:
    """Run the tower ``warmup`` times; return a measurement giving the seconds of one more batch."""
    def run() -> None:
        if backward:
            tower.train()
            tower(inputs).sum().backward()
            tower.zero_grad(set_to_none=True)
        else:
            tower.eval()
            with torch.inference_mode():
                tower(inputs)

    for _ in range(warmup):
        run()
    measured = timer(run)
    return lambda: measured.timeit(1).mean


def text_tokens(config, batch: int, generator: torch.Generator) -> Tensor:
    """Random token ids ``(batch, context)`` with the end-of-text id (the largest) at a random
    position in each row and zeros after it, as the tokenizer pads."""
    tokens = torch.randint(1, config.vocab_size - 1, (batch, config.context_length), generator=generator)
    ends = torch.randint(config.context_length // 4, config.context_length, (batch,), generator=generator)
    positions = torch.arange(config.context_length)
    tokens[positions[None] == ends[:, None]] = config.vocab_size - 1
    return tokens.masked_fill(positions[None] > ends[:, None], 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meru-vit-s", choices=[n for n in MODEL_NAMES if "vit" in n])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per tower and mode")
    parser.add_argument("--iterations", type=int, default=3, help="timed batches (interleaved rounds) per tower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    config = model_config(args.model)
    torch.manual_seed(args.seed)
    ours = build_model(args.model)
    references, status = reference_towers(config)
    print(f"reference towers: {status}", flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = {"image": torch.rand(args.batch, config.in_channels, config.image_size, config.image_size, generator=generator),
              "text": text_tokens(config, args.batch, generator)}
    pairs = {"image": ours.visual, "text": ours.textual}
    parameters = {f"ours {k}": sum(p.numel() for p in m.parameters()) for k, m in pairs.items()}
    parameters.update({f"reference {k}": sum(p.numel() for p in m.parameters()) for k, m in references.items()})

    rows = []
    for device in ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]:
        for kind, tower in pairs.items():
            batch = inputs[kind].to(device)
            towers = {"ours": tower.to(device), **({"reference": references[kind].to(device)} if kind in references else {})}
            for mode in ("forward", "forward+backward"):
                seconds = interleaved({name: measurement(t, batch, mode != "forward", args.warmup)
                                       for name, t in towers.items()}, args.iterations)
                speed = {name: args.batch / statistics.median(times) for name, times in seconds.items()}
                ratio = speed["ours"] / speed["reference"] if "reference" in speed else None
                rows.append({"device": device, "tower": kind, "mode": mode, "seconds": seconds,
                             "items_per_second": speed, "ours_over_reference": ratio})
                print(f"{device} {kind} {mode}: {speed}", flush=True)

    header = ["device", "tower", "mode", "ours items/s", "reference items/s", "ours / reference"]
    cells = [[r["device"], r["tower"], r["mode"], cell(r["items_per_second"]["ours"], ".1f"),
              cell(r["items_per_second"].get("reference"), ".1f"), cell(r["ours_over_reference"], ".2f")] for r in rows]
    table = markdown_table(header, cells, 3) + (
        f"\nReference towers: timm {status['timm']} (image), open_clip {status['open_clip']} (text), with "
        f"{status['torchvision']}. Parameters: " + ", ".join(f"{k} {v:,}" for k, v in parameters.items()) + ".\n")
    run_config = {**{k: v for k, v in vars(args).items() if k != "out"}, "dtype": "float32",
                  "threads": torch.get_num_threads(), "timm_name": TIMM_NAMES[config.name[-1]]}
    write_results(args.out / f"{NAME}.json", args.out / f"{NAME}.md",
                  {"config": run_config, "status": status, "parameters": parameters, "rows": rows}, table)


if __name__ == "__main__":
    main()
