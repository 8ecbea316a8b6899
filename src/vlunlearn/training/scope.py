"""Which parameters an unlearning run may update: a tower choice and an optional name filter."""

from __future__ import annotations

import re

from torch import nn

from vlunlearn.errors import ConfigError


def restrict_parameters(model: nn.Module, towers: str, parameter_filter: str) -> dict:
    """Freeze every trainable parameter of ``model`` outside the scope, in place.

    ``towers`` is ``both``, ``image`` or ``graph`` (the input tower) or ``text``: a parameter is in scope when its tower (the
    model's ``parameter_tower(name)``) is chosen; shared scalars (temperature, curvature) only
    with ``both``. ``parameter_filter`` further keeps only names it matches (``re.search``).
    Parameters that were already frozen stay frozen.

    Returns:
        what will be updated: ``{"towers", "parameter_filter", "tensors", "numel", "names"}``.

    Raises:
        ConfigError: the scope selects no trainable parameter.
    """
    pattern = re.compile(parameter_filter)
    names, numel = [], 0
    for name, param in model.named_parameters():
        tower = model.parameter_tower(name)
        in_scope = (towers == "both" or tower == towers) and bool(pattern.search(name))
        param.requires_grad_(param.requires_grad and in_scope)
        if param.requires_grad:
            names.append(name)
            numel += param.numel()
    if not names:
        raise ConfigError(
            f"towers={towers!r} with parameter_filter={parameter_filter!r} selects no trainable parameter of "
            f"{type(model).__name__}; parameter names look like {next(iter(dict(model.named_parameters())))!r}"
        )
    return {"towers": towers, "parameter_filter": parameter_filter, "tensors": len(names), "numel": numel, "names": names}
