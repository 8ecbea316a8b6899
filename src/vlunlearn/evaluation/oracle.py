"""How close an unlearned model is to the retrained oracle, and what unlearning cost.

- :func:`oracle_gap`: ``|m(unlearned) - m(retrain)|`` per metric and its mean over the
  metrics of DESIGN §5 (forget, retain and test accuracy, MIA AUC).
- :func:`cost_record`: wall time, steps and peak memory of a method and its time ratio to
  retraining.
- :func:`peak_memory`: a context manager measuring the peak memory of a block.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

try:  # not available on Windows
    import resource
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]

ORACLE_GAP_METRICS = ("zs_train_forget", "zs_train_retain", "zs_test_forget", "zs_test_retain", "mia_auc")
"""Forget accuracy (D_f), retain accuracy (D_r), test accuracy (test-forget and test-retain,
as :func:`~vlunlearn.evaluation.zero_shot.evaluate_splits` names them) and membership
inference AUC."""


def as_number(value) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, not a number, a bool or NaN."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def oracle_gap(
    metrics: Mapping[str, float],
    reference: Mapping[str, float],
    keys: Sequence[str] = ORACLE_GAP_METRICS,
) -> dict[str, float]:
    """``|metrics[k] - reference[k]|`` for each of ``keys``, and their ``"mean"``.

    ``metrics`` are the unlearned model's values and ``reference`` the retrained model's,
    on the same scale (accuracies in percent and an AUC in [0, 1] are not rescaled, so the
    mean mixes the two scales as given). A key is skipped, without error, when it is
    missing from either dict or its value in either is ``None`` or NaN; the result then has
    no entry for it. ``"mean"`` is the mean over the keys kept, NaN when none is.
    """
    gaps: dict[str, float] = {}
    for key in keys:
        if key not in metrics or key not in reference:
            continue
        value, target = as_number(metrics[key]), as_number(reference[key])
        if value is None or target is None:
            continue
        gaps[key] = abs(value - target)
    gaps["mean"] = sum(gaps.values()) / len(gaps) if gaps else math.nan
    return gaps


def cost_record(
    seconds: float,
    steps: int,
    peak_memory_bytes: int | None,
    reference_seconds: float | None,
) -> dict:
    """The cost of one method as a JSON-ready dict.

    Returns ``{"seconds", "steps", "peak_memory_bytes", "reference_seconds",
    "ratio_to_reference"}`` where ``ratio_to_reference = seconds / reference_seconds`` (the
    reference is usually retraining from scratch), or ``None`` when there is no positive
    reference time. Negative times or steps raise ``ValueError``.
    """
    if seconds < 0 or steps < 0:
        raise ValueError(f"seconds and steps must be non-negative, got {seconds} and {steps}")
    ratio = None
    if reference_seconds is not None and reference_seconds > 0:
        ratio = float(seconds) / float(reference_seconds)
    return {
        "seconds": float(seconds),
        "steps": int(steps),
        "peak_memory_bytes": None if peak_memory_bytes is None else int(peak_memory_bytes),
        "reference_seconds": None if reference_seconds is None else float(reference_seconds),
        "ratio_to_reference": ratio,
    }


def _max_rss_bytes() -> int | None:
    if resource is None:
        return None
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(max_rss) if sys.platform == "darwin" else int(max_rss) * 1024  # kilobytes on Linux


@dataclass
class PeakMemory:
    """What :func:`peak_memory` measured; the fields are filled when the block exits.

    Attributes:
        cpu_bytes: the process's peak resident set size (``ru_maxrss``) at the end of the
            block. This is a high-water mark over the whole life of the process, not only
            the block: if the process used more memory earlier, the block's own peak is
            hidden under it. ``None`` where ``resource`` is unavailable.
        cpu_increase_bytes: how much that high-water mark rose during the block; a lower
            bound on the block's extra memory (0 when the block stayed below an earlier
            peak).
        cuda_bytes: ``torch.cuda.max_memory_allocated`` on the current device during the
            block (the peak counter is reset on entry when CUDA is initialised). Counts
            tensors from PyTorch's caching allocator only. ``None`` when CUDA was not used.
    """

    cpu_bytes: int | None = None
    cpu_increase_bytes: int | None = None
    cuda_bytes: int | None = None

    @property
    def peak_bytes(self) -> int | None:
        """The figure to report: the CUDA peak when CUDA was used, else the CPU high-water mark."""
        return self.cuda_bytes if self.cuda_bytes is not None else self.cpu_bytes


@contextlib.contextmanager
def peak_memory() -> Iterator[PeakMemory]:
    """Measure the peak memory of a block: ``with peak_memory() as peak: ...; peak.peak_bytes``.

    CPU: the process's ``ru_maxrss`` before and after (see :class:`PeakMemory` for why that
    is a process-lifetime high-water mark, so only an upper bound for the block, with the
    rise during the block as a lower bound). CUDA: when CUDA is initialised on entry the
    peak counter of the current device is reset (this changes the global counter other
    code may read); when it is only initialised inside the block the counter starts there.
    Either way the value is read on exit. CUDA is never initialised by this function.
    """
    result = PeakMemory()
    cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda_ready:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _max_rss_bytes()
    try:
        yield result
    finally:
        after = _max_rss_bytes()
        result.cpu_bytes = after
        result.cpu_increase_bytes = None if after is None or before is None else max(0, after - before)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            result.cuda_bytes = int(torch.cuda.max_memory_allocated())
