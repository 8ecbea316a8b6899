"""Stateless metrics over any model with ``encode_input``, ``encode_text`` and ``geometry``."""

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
    input_traversal,
)
from vlunlearn.evaluation.forget_quality import distinguishability, forget_quality, forget_quality_metrics, pair_scores
from vlunlearn.evaluation.landing import hierarchy_prompts, landing_metrics, traversal_examples, tree_metrics, tree_relation
from vlunlearn.evaluation.mia import (
    calibrated_attack,
    membership_features,
    membership_inference,
    mia_metrics,
    score_attack,
)
from vlunlearn.evaluation.oracle import ORACLE_GAP_METRICS, PeakMemory, cost_record, oracle_gap, peak_memory
from vlunlearn.evaluation.retrieval import recall_at_k, retrieval_metrics
from vlunlearn.evaluation.suite import evaluate_unlearning
from vlunlearn.evaluation.zero_shot import (
    class_embeddings,
    class_prompts,
    concept_detection,
    detection_metrics,
    encode_inputs,
    encode_texts,
    evaluate_splits,
    evaluate_zero_shot,
    topk_accuracy,
    zero_shot_accuracy,
    zero_shot_predictions,
    zero_shot_scores,
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
    "calibrated_attack",
    "class_embeddings",
    "class_prompts",
    "concept_detection",
    "cost_record",
    "detection_metrics",
    "distance_to_origin_by_concept",
    "distance_to_origin_by_level",
    "distinguishability",
    "encode_inputs",
    "encode_texts",
    "entailment_rate",
    "evaluate_splits",
    "evaluate_unlearning",
    "evaluate_zero_shot",
    "forget_quality",
    "forget_quality_metrics",
    "hierarchy_prompts",
    "input_traversal",
    "landing_metrics",
    "membership_features",
    "membership_inference",
    "mia_metrics",
    "oracle_gap",
    "pair_scores",
    "peak_memory",
    "recall_at_k",
    "retrieval_metrics",
    "score_attack",
    "topk_accuracy",
    "traversal_examples",
    "tree_metrics",
    "tree_relation",
    "zero_shot_accuracy",
    "zero_shot_predictions",
    "zero_shot_scores",
]
