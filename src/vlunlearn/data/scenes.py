"""``fashion-scenes``: built-in scenes of several Fashion-MNIST items with pair-specific captions.

Each 28x28 scene is a 2x2 grid of 14x14 cells holding one to three items drawn from the
vendored Fashion-MNIST subset (training scenes from its training images, test scenes from its
test images). Every item has visible attributes: its cell (top left, top right, bottom left,
bottom right), its size (a ``small`` item is drawn at 10x10 in its cell, a normal one fills
it) and its shade (a ``dark`` item at 45% intensity). The most specific caption names every
item with its attributes in reading order::

    "a small dark sneaker top left, a coat top right and a bag bottom right."

so that (a) nearly every caption is unique and retrieval measures pairs, not templates,
(b) a concept shares its images with retained concepts (forgetting ``sneaker`` removes every
scene with a sneaker, bags and coats included, as on COCO or Flickr30k), and (c) sample
requests are meaningful. Each scene also has a generic and a family caption
(``"three items of clothing."``, ``"a footwear item, a top item and an accessory item."``),
the three levels of the concept hierarchy (clothing -> family -> class) that MERU learns.

Scenes are a pure function of the vendored images and fixed generators: no seed argument
changes them, so runs with different seeds train on the same pairs. Single-item scenes carry
their item's class as label (zero-shot classification is measured on them); scenes with
several items are labelled -1 and are evaluated by per-concept detection.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from vlunlearn.data.hierarchy import FASHION_MNIST, ConceptHierarchy, fill

TRAIN_SCENES = 3000  # few enough that the originals remember their pairs: a membership signal to audit
TEST_SCENES = 2000
ITEM_COUNT_WEIGHTS = (0.2, 0.4, 0.4)  # scenes with one, two and three items
CELL = 14
SMALL = 10
DARK = 0.45
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS = ("one", "two", "three", "four")
_SCENE_SEEDS = {"train": 1729, "test": 4104}  # fixed: the scenes never move with a run's seed

FASHION_SCENES = ConceptHierarchy(
    name="fashion-scenes",
    classes=FASHION_MNIST.classes,
    parents=FASHION_MNIST.parents,
    root=FASHION_MNIST.root,
    caption_templates={
        "generic": ("an item of {}.",),
        "family": ("a {} item.",),
        "class": tuple(f"a {{}} {position}." for position in POSITIONS),
    },
    prompt_templates=tuple(f"a {{}} {position}." for position in POSITIONS)
    + tuple(f"a {attribute} {{}} {position}." for attribute in ("small", "dark") for position in POSITIONS),
)


def _shrink(images: np.ndarray, size: int) -> np.ndarray:
    """Area-resize uint8 ``(N, 28, 28)`` items to float32 ``(N, size, size)``."""
    tensor = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="area").squeeze(1).numpy()


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _family_caption(families: list[str]) -> str:
    counts: dict[str, int] = {}
    for family in families:
        counts[family] = counts.get(family, 0) + 1
    parts = [fill("a {} item", f) if n == 1 else f"{COUNT_WORDS[n - 1]} {f} items" for f, n in counts.items()]
    return _join(parts) + "."


@functools.lru_cache(maxsize=None)
def compose_scenes(items: bytes, labels: bytes, count: int, split: str) -> dict[str, np.ndarray | list]:
    """Compose ``count`` scenes from items (uint8 ``(N, 28, 28)`` and int64 labels, as bytes
    so that the result can be cached). Returns ``images`` uint8 ``(count, 28, 28)``,
    ``captions`` (generic, family, specific) per scene, ``classes`` (class indices per scene in
    reading order) and ``labels`` int64 ``(count,)`` (-1 for several items)."""
    source = np.frombuffer(items, dtype=np.uint8).reshape(-1, 28, 28)
    source_labels = np.frombuffer(labels, dtype=np.int64)
    large, small = _shrink(source, CELL), _shrink(source, SMALL)
    rng = np.random.default_rng(_SCENE_SEEDS[split])
    hierarchy = FASHION_SCENES
    images = np.zeros((count, 28, 28), dtype=np.float32)
    captions, classes, scene_labels = [], [], np.full(count, -1, dtype=np.int64)
    for s in range(count):
        n = int(rng.choice(len(ITEM_COUNT_WEIGHTS), p=ITEM_COUNT_WEIGHTS)) + 1
        cells = np.sort(rng.choice(len(POSITIONS), size=n, replace=False))
        picks = rng.integers(len(source), size=n)
        is_small, is_dark = rng.random(n) < 0.5, rng.random(n) < 0.5
        parts, families, shown = [], [], []
        for cell, pick, tiny, dark in zip(cells.tolist(), picks.tolist(), is_small, is_dark):
            row, col = divmod(cell, 2)
            patch = (small if tiny else large)[pick] * (DARK if dark else 1.0)
            offset = (CELL - patch.shape[0]) // 2
            top, left = row * CELL + offset, col * CELL + offset
            images[s, top : top + patch.shape[0], left : left + patch.shape[1]] = patch
            name = hierarchy.classes[int(source_labels[pick])]
            attributes = " ".join(word for word, on in (("small", tiny), ("dark", dark)) if on)
            parts.append(fill("a {} " + POSITIONS[cell], f"{attributes} {name}".strip()))
            families.append(hierarchy.parents[name])
            shown.append(int(source_labels[pick]))
        captions.append((f"{COUNT_WORDS[n - 1]} item{'s' if n > 1 else ''} of clothing.", _family_caption(families),
                         _join(parts) + "."))
        classes.append(shown)
        if n == 1:
            scene_labels[s] = shown[0]
    return {
        "images": np.rint(images).clip(0, 255).astype(np.uint8),
        "captions": captions,
        "classes": classes,
        "labels": scene_labels,
    }
