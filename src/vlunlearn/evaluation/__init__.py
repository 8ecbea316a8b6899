"""Stateless metrics over any model with ``encode_image``, ``encode_text`` and ``geometry``."""

from vlunlearn.evaluation.alignment import (
    alignment_audit,
    alignment_gap,
    alignment_gap_matrix,
    alignment_matrix,
    alignment_selection,
)
from vlunlearn.evaluation.hierarchy import (
    ROOT,
    distance_to_origin_by_concept,
    distance_to_origin_by_level,
    entailment_rate,
    image_traversal,
)
from vlunlearn.evaluation.mia import membership_features, membership_inference, mia_metrics
from vlunlearn.evaluation.oracle import ORACLE_GAP_METRICS, PeakMemory, cost_record, oracle_gap, peak_memory
from vlunlearn.evaluation.retrieval import recall_at_k, retrieval_metrics
from vlunlearn.evaluation.suite import evaluate_unlearning
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
    "ORACLE_GAP_METRICS",
    "ROOT",
    "PeakMemory",
    "alignment_audit",
    "alignment_gap",
    "alignment_gap_matrix",
    "alignment_matrix",
    "alignment_selection",
    "class_embeddings",
    "class_prompts",
    "cost_record",
    "distance_to_origin_by_concept",
    "distance_to_origin_by_level",
    "encode_images",
    "encode_texts",
    "entailment_rate",
    "evaluate_splits",
    "evaluate_unlearning",
    "evaluate_zero_shot",
    "image_traversal",
    "membership_features",
    "membership_inference",
    "mia_metrics",
    "oracle_gap",
    "peak_memory",
    "recall_at_k",
    "retrieval_metrics",
    "zero_shot_accuracy",
    "zero_shot_predictions",
]
