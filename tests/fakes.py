"""Stand-ins shared by the metric tests: a tokenizer of known texts and a model whose embeddings
are given tables, so that metrics can be checked against hand-computed values."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class FakeTokenizer:
    """Maps each known text to a one-token row holding its index."""

    def __init__(self, texts):
        self.index = {text: i for i, text in enumerate(texts)}

    def __call__(self, texts, context_length=77):
        return torch.tensor([[self.index[t]] for t in texts], dtype=torch.long)


def fake_model(geometry, image_table, text_table, c=None):
    """Image ``i`` (all pixels equal to ``i``) embeds to ``image_table[i]``; text token ``k`` to
    ``text_table[k]``; curvature ``c`` (float64), or ``None`` for a Euclidean model."""
    return SimpleNamespace(
        geometry=geometry,
        curvature=lambda: None if c is None else torch.tensor(c, dtype=torch.float64),
        config=SimpleNamespace(context_length=77),
        eval=lambda: None,
        encode_input=lambda images: image_table[(images[:, 0, 0, 0] * 255).round().long()],
        encode_text=lambda tokens: text_table[tokens[:, 0]],
    )


def random_clothing_pairs(names, labels=None, class_names=()):
    """Random 28x28 grey images captioned ``"a photo of a <name>."`` (under a generic caption),
    for smoke tests on an untrained tiny model; ``labels`` default to -1."""
    from vlunlearn.data import PairDataset

    n = len(names)
    return PairDataset(
        name="smoke",
        inputs=torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8),
        captions=[("a photo of clothing.", f"a photo of a {name}.") for name in names],
        concepts=[frozenset() for _ in range(n)],
        labels=torch.full((n,), -1) if labels is None else torch.tensor(labels),
        ids=[f"s{i}" for i in range(n)],
        class_names=class_names,
    )
