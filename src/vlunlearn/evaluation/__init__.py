"""Stateless metrics over any model with ``encode_image``, ``encode_text`` and ``geometry``."""

from vlunlearn.evaluation.zero_shot import (
    class_embeddings,
    class_prompts,
    encode_images,
    encode_texts,
    evaluate_splits,
    evaluate_zero_shot,
    zero_shot_accuracy,
    zero_shot_predictions,
)

__all__ = [
    "class_embeddings",
    "class_prompts",
    "evaluate_splits",
    "evaluate_zero_shot",
    "encode_images", "encode_texts", "zero_shot_accuracy", "zero_shot_predictions"]
