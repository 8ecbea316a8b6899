"""How close an unlearned model is to the retrained oracle, and what unlearning cost.

- :func:`oracle_gap`: ``|m(unlearned) - m(retrain)|`` per metric on a common scale, and
  their mean, over the headline metrics of DESIGN §5 (:data:`ORACLE_GAP_METRICS`).
- :func:`cost_record`: wall time, steps and peak memory of a method and its time ratio to
  retraining.
- :func:`peak_memory`: a context manager measuring a block's own peak memory.

How the oracle gap is combined: every metric is first put on the fraction scale with
:func:`metric_scale` (percentages, i.e. keys starting with ``zs_`` or ``retrieval_``, are
divided by 100; AUCs, rates and gaps are already fractions and are kept as they are). The
gap of a metric is the absolute difference of the two fractions,
``|m(unlearned) - m(retrain)| * metric_scale(key)``, so a 10-point accuracy difference and a
0.1 AUC difference both count 0.1. The reported ``"mean"`` is the unweighted arithmetic mean
of the gaps of the metrics present (as numbers, not NaN) in both records; the others are
left out of the mean, not counted as 0.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import sys
import threading
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

try:  # not available on Windows
    import resource
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]

ORACLE_GAP_METRICS = (
    "zs_train_forget",
    "zs_train_retain",
    "zs_test_forget",
    "zs_test_retain",
    "mia_auc",
    "mia_calibrated_auc",
    "distinguishability",
)
"""Forget accuracy (D_f), retain accuracy (D_r), test accuracy (test-forget and test-retain,
as :func:`~vlunlearn.evaluation.zero_shot.evaluate_splits` names them, in percent),
membership inference AUC (plain and calibrated) and distinguishability (fractions)."""

PERCENT_PREFIXES = ("zs_", "retrieval_")
"""Metric keys with these prefixes are percentages; all other metrics are fractions."""

SAMPLER_THREAD_NAME = "vlunlearn-peak-memory"
"""Name of the daemon thread :func:`peak_memory` samples resident memory in."""


def as_number(value) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, not a number, a bool or NaN."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def metric_scale(key: str) -> float:
    """The factor putting metric ``key`` on the fraction scale: 0.01 for percentages
    (keys starting with ``zs_`` or ``retrieval_``), 1.0 for AUCs, rates and gaps."""
    return 0.01 if key.startswith(PERCENT_PREFIXES) else 1.0


def oracle_gap(
    metrics: Mapping[str, float],
    reference: Mapping[str, float],
    keys: Sequence[str] = ORACLE_GAP_METRICS,
) -> dict[str, float]:
    """``|metrics[k] - reference[k]| * metric_scale(k)`` for each of ``keys``, and their ``"mean"``.

    ``metrics`` are the unlearned model's values and ``reference`` the retrained model's, each
    metric on its own native scale (percent or fraction); every gap is returned as a fraction
    (see the module docstring). A key is skipped, without error, when it is missing from either
    dict or its value in either is ``None`` or NaN; the result then has no entry for it.
    ``"mean"`` is the mean over the keys kept, NaN when none is.
    """
    gaps: dict[str, float] = {}
    for key in keys:
        if key not in metrics or key not in reference:
            continue
        value, target = as_number(metrics[key]), as_number(reference[key])
        if value is None or target is None:
            continue
        gaps[key] = abs(value - target) * metric_scale(key)
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


def current_rss_bytes() -> int | None:
    """The process's current resident set size (``/proc/self/statm``: resident pages x page
    size), or ``None`` where ``/proc`` is unavailable (not Linux)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * mmap.PAGESIZE


def _max_rss_bytes() -> int | None:
    """The process's lifetime peak resident set size (``ru_maxrss``), ``None`` without ``resource``."""
    if resource is None:
        return None
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(max_rss) if sys.platform == "darwin" else int(max_rss) * 1024  # kilobytes on Linux


class _RssSampler:
    """Keeps the maximum of :func:`current_rss_bytes`, sampled every ``interval`` seconds in a
    daemon thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, start_bytes: int, interval: float):
        self.peak = start_bytes
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=SAMPLER_THREAD_NAME, daemon=True)

    def _sample(self) -> None:
        rss = current_rss_bytes()
        if rss is not None and rss > self.peak:
            self.peak = rss

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self._sample()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        """Stop and join the thread, take a last sample and return the peak in bytes."""
        self._stopped.set()
        self._thread.join()
        self._sample()
        return self.peak


@dataclass
class PeakMemory:
    """What :func:`peak_memory` measured; the fields are filled when the block exits.

    Attributes:
        cpu_bytes: the block's own CPU peak: how far resident memory rose above its value at
            the start of the block, at the highest point of the block. Memory the process
            held before the block does not count, so consecutive blocks in one process each
            report their own figure. ``None`` where neither ``/proc`` nor ``resource`` exists.
        cpu_start_bytes: resident memory at the start of the block (the current RSS; in the
            fallback, the process's ``ru_maxrss`` high-water mark at the start).
        cpu_sampled: ``True`` when ``cpu_bytes`` comes from RSS sampling (Linux); ``False``
            for the fallback, the rise of ``ru_maxrss`` during the block, which is only a lower
            bound (0 when the block stayed below an earlier peak of the process).
        cuda_bytes: ``torch.cuda.max_memory_allocated`` on the current device during the
            block (the peak counter is reset on entry when CUDA is initialised). Counts
            tensors from PyTorch's caching allocator only. ``None`` when CUDA was not used.
    """

    cpu_bytes: int | None = None
    cpu_start_bytes: int | None = None
    cpu_sampled: bool = False
    cuda_bytes: int | None = None

    @property
    def peak_bytes(self) -> int | None:
        """The figure to report: the CUDA peak when CUDA was used, else the block's CPU peak rise."""
        return self.cuda_bytes if self.cuda_bytes is not None else self.cpu_bytes


@contextlib.contextmanager
def peak_memory(interval: float = 0.005) -> Iterator[PeakMemory]:
    """Measure the peak memory of a block: ``with peak_memory() as peak: ...; peak.peak_bytes``.

    CPU on Linux: the current RSS is read on entry, then every ``interval`` seconds in a daemon
    thread and once more on exit; ``cpu_bytes`` is the maximum minus the value on entry. A
    spike shorter than ``interval`` (and freed before exit) can be missed. The thread is
    stopped and joined on exit, also when the block raises. Elsewhere: the rise of
    ``ru_maxrss`` (a lower bound, see :class:`PeakMemory`). CUDA: when CUDA is initialised on
    entry the peak counter of the current device is reset (this changes the global counter
    other code may read); when it is only initialised inside the block the counter starts
    there. Either way the value is read on exit. CUDA is never initialised by this function.
    """
    result = PeakMemory()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = current_rss_bytes()
    sampler = None if start is None else _RssSampler(start, interval)
    before = _max_rss_bytes() if sampler is None else start
    if sampler is not None:
        sampler.start()
    try:
        yield result
    finally:
        result.cpu_start_bytes = before
        if sampler is not None:
            result.cpu_bytes = sampler.stop() - start
            result.cpu_sampled = True
        else:
            after = _max_rss_bytes()
            result.cpu_bytes = None if after is None or before is None else max(0, after - before)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            result.cuda_bytes = int(torch.cuda.max_memory_allocated())
