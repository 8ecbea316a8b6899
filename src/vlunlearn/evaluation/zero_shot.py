"""Zero-shot classification with prompt ensembles (MERU's and CLIP's protocol).

Class embeddings are the geometry's centroid of the prompt embeddings: for CLIP
normalise-mean-normalise, for MERU the mean in the tangent space at the origin
mapped back with ``exp_map0`` (equal to MERU's ensembling of unprojected features).
Images are assigned to the most similar class (cosine, or negative geodesic
distance, which ranks like MERU's Lorentzian inner product).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer, UnlearningSplits


@torch.no_grad()
def encode_images(model, data: PairDataset, batch_size: int = 500) -> Tensor:
    """Embeddings of every image of ``data``. Returns ``(N, D)``."""
    model.eval()
    chunks = [
        model.encode_image(data.image_batch(torch.arange(start, min(start + batch_size, len(data)))))
        for start in range(0, len(data), batch_size)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def encode_texts(model, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 500) -> Tensor:
    """Embeddings of ``texts``. Returns ``(N, D)``."""
    model.eval()
    context = model.config.context_length
    chunks = [
        model.encode_text(tokenizer(list(texts[start : start + batch_size]), context))
        for start in range(0, len(texts), batch_size)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def class_embeddings(model, tokenizer: Tokenizer, prompts: Sequence[Sequence[str]]) -> Tensor:
    """One embedding per class from its prompt ensemble. ``K`` lists of prompts -> ``(K, D)``."""
    flat = [prompt for class_prompts in prompts for prompt in class_prompts]
    embeddings = encode_texts(model, tokenizer, flat)
    c = model.curvature()
    centroids, start = [], 0
    for class_prompts in prompts:
        centroids.append(model.geometry.mean(embeddings[start : start + len(class_prompts)], c))
        start += len(class_prompts)
    return torch.stack(centroids)


@torch.no_grad()
def zero_shot_predictions(model, image_emb: Tensor, class_emb: Tensor) -> Tensor:
    """Index of the most similar class for each image. ``(N, D), (K, D) -> (N,)``."""
    return model.geometry.pairwise_similarity(image_emb, class_emb, model.curvature()).argmax(dim=1)


def zero_shot_accuracy(predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 accuracy in percent: ``micro`` over images and ``macro`` over the classes present.

    ``predictions`` and ``labels`` are ``(N,)`` class indices; items labelled -1 are ignored.
    """
    keep = labels >= 0
    predictions, labels = predictions[keep], labels[keep]
    if labels.numel() == 0:
        return {"micro": float("nan"), "macro": float("nan"), "count": 0}
    correct = (predictions == labels).float()
    per_class = [correct[labels == k].mean() for k in labels.unique()]
    return {
        "micro": 100 * correct.mean().item(),
        "macro": 100 * torch.stack(per_class).mean().item(),
        "count": int(labels.numel()),
    }


DEFAULT_PROMPTS = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


def class_prompts(data: PairDataset, templates: Sequence[str] | None = None) -> list[list[str]]:
    """The prompt ensemble of every class of ``data``: ``templates`` (each with one ``{}`` for
    the class name) when given, else its hierarchy's, else generic templates."""
    if templates is not None:
        bad = [t for t in templates if t.count("{}") != 1]
        if not templates or bad:
            raise ValueError(f"prompt templates need exactly one '{{}}' for the class name; got {list(bad or templates)}")
        return [[template.format(name) for template in templates] for name in data.class_names]
    if data.hierarchy is not None:
        return [data.hierarchy.class_prompts(name) for name in data.class_names]
    return [[template.format(name) for template in DEFAULT_PROMPTS] for name in data.class_names]


def evaluate_zero_shot(
    model, data: PairDataset, tokenizer: Tokenizer, templates: Sequence[str] | None = None
) -> dict[str, float]:
    """Zero-shot top-1 accuracy (micro and macro, percent) of ``model`` on ``data`` over all of
    its classes, with the prompt ``templates`` when given (see :func:`class_prompts`)."""
    class_emb = class_embeddings(model, tokenizer, class_prompts(data, templates))
    predictions = zero_shot_predictions(model, encode_images(model, data), class_emb)
    return zero_shot_accuracy(predictions, data.labels)


def evaluate_splits(model, splits: UnlearningSplits, tokenizer: Tokenizer) -> dict[str, float]:
    """Zero-shot micro top-1 (percent, over all classes) on test-forget, test-retain, D_f and D_r."""
    class_emb = class_embeddings(model, tokenizer, class_prompts(splits.retain))
    parts = {
        "zs_test_forget": splits.test_forget,
        "zs_test_retain": splits.test_retain,
        "zs_train_forget": splits.forget,
        "zs_train_retain": splits.retain,
    }
    return {
        key: zero_shot_accuracy(zero_shot_predictions(model, encode_images(model, data), class_emb), data.labels)["micro"]
        for key, data in parts.items()
    }
