"""Data: tokenizer, built-in datasets with concept hierarchies, image-text files, unlearning requests."""

from vlunlearn.data.builtin import BUILTIN_DATASETS, builtin_hierarchy, load_builtin
from vlunlearn.data.concept_tree import (
    SYNTHETIC_ROOT,
    ConceptLabels,
    check_test_concepts,
    concept_labels,
    describe,
    hierarchy_from_parents,
    implied_parents,
    with_hierarchy,
)
from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.folder import load_class_folder, load_image_text_folder, load_tar_shards
from vlunlearn.data.hierarchy import DIGITS, FASHION_MNIST, LEVELS, ConceptHierarchy, read_hierarchy_file
from vlunlearn.data.requests import UnlearningRequest, UnlearningSplits, make_splits
from vlunlearn.data.tokenizer import Tokenizer

__all__ = [
    "BUILTIN_DATASETS",
    "DIGITS",
    "FASHION_MNIST",
    "LEVELS",
    "ConceptHierarchy",
    "ConceptLabels",
    "PairDataset",
    "SYNTHETIC_ROOT",
    "Tokenizer",
    "UnlearningRequest",
    "UnlearningSplits",
    "builtin_hierarchy",
    "check_test_concepts",
    "concept_labels",
    "describe",
    "hierarchy_from_parents",
    "implied_parents",
    "load_builtin",
    "load_class_folder",
    "load_image_text_folder",
    "load_tar_shards",
    "make_splits",
    "read_hierarchy_file",
    "with_hierarchy",
]
