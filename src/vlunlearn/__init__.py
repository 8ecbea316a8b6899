"""vlunlearn: make vision-language contrastive models (CLIP, MERU) forget, and prove it."""

from vlunlearn.unlearning import EarlyStop, UnlearnRecord, unlearn

__all__ = ["EarlyStop", "UnlearnRecord", "unlearn"]
