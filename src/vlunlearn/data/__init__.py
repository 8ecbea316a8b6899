"""Data: tokenizer, built-in datasets with concept hierarchies, image-text files, unlearning requests."""

from vlunlearn.data.builtin import BUILTIN_DATASETS, builtin_hierarchy, load_builtin
from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.folder import load_class_folder, load_image_text_folder, load_tar_shards
from vlunlearn.data.hierarchy import DIGITS, FASHION_MNIST, LEVELS, ConceptHierarchy
from vlunlearn.data.requests import UnlearningRequest, UnlearningSplits, make_splits
from vlunlearn.data.tokenizer import Tokenizer

__all__ = [
    "BUILTIN_DATASETS",
    "DIGITS",
    "FASHION_MNIST",
    "LEVELS",
    "ConceptHierarchy",
    "PairDataset",
    "Tokenizer",
    "UnlearningRequest",
    "UnlearningSplits",
    "builtin_hierarchy",
    "load_builtin",
    "load_class_folder",
    "load_image_text_folder",
    "load_tar_shards",
    "make_splits",
]
