"""Unlearning methods, one file each, registered by name (see :func:`get_method`)."""

from vlunlearn.methods import ac, finetune, hac, multidelete, neggrad, neggrad_plus, random_pairs, salun, scrub  # noqa: F401  (registration)
from vlunlearn.methods.base import (
    MethodConfig,
    MethodContext,
    UnlearningMethod,
    UnlearningObjective,
    available_methods,
    get_method,
    make_config,
    method_summaries,
    register,
)

__all__ = [
    "MethodConfig",
    "MethodContext",
    "UnlearningMethod",
    "UnlearningObjective",
    "available_methods",
    "get_method",
    "make_config",
    "method_summaries",
    "register",
]
