"""Oracle gap and cost records: closed-form values on the fraction scale, skipped keys, the time
ratio, and each block's own peak memory."""

from __future__ import annotations

import json
import math
import mmap
import sys
import threading
import time

import numpy as np
import pytest
import torch

from vlunlearn.evaluation import oracle
from vlunlearn.evaluation.oracle import (
    ORACLE_GAP_METRICS,
    SAMPLER_THREAD_NAME,
    PeakMemory,
    cost_record,
    current_rss_bytes,
    metric_scale,
    oracle_gap,
    peak_memory,
)

UNLEARNED = {"zs_train_forget": 10.0, "zs_train_retain": 90.0, "zs_test_forget": 5.0, "zs_test_retain": 85.0,
             "mia_auc": 0.6, "extra": 123.0}
RETRAINED = {"zs_train_forget": 20.0, "zs_train_retain": 88.0, "zs_test_forget": 0.0, "zs_test_retain": 86.0,
             "mia_auc": 0.5}


def test_metric_names_follow_the_design():
    assert ORACLE_GAP_METRICS == ("zs_train_forget", "zs_train_retain", "zs_test_forget", "zs_test_retain", "mia_auc",
                                  "mia_calibrated_auc", "distinguishability")


def test_metric_scale_puts_percentages_on_the_fraction_scale():
    assert metric_scale("zs_test_forget") == 0.01 and metric_scale("retrieval_forget_r@1") == 0.01
    for key in ("mia_auc", "mia_calibrated_auc", "distinguishability", "extra"):
        assert metric_scale(key) == 1.0


def test_a_ten_point_accuracy_gap_weighs_as_much_as_a_tenth_of_auc():
    accuracy = oracle_gap({"zs_train_forget": 30.0}, {"zs_train_forget": 20.0})
    auc = oracle_gap({"mia_auc": 0.6}, {"mia_auc": 0.5})
    assert accuracy["zs_train_forget"] == pytest.approx(0.1) and accuracy["mean"] == pytest.approx(auc["mean"])
    assert auc["mia_auc"] == pytest.approx(0.1)


def test_oracle_gap_closed_form():
    gap = oracle_gap(UNLEARNED, RETRAINED)
    expected = {"zs_train_forget": 0.10, "zs_train_retain": 0.02, "zs_test_forget": 0.05, "zs_test_retain": 0.01,
                "mia_auc": 0.1}
    assert set(gap) == set(expected) | {"mean"}  # "extra" is not a gap metric
    for key, value in expected.items():
        assert gap[key] == pytest.approx(value)
    assert gap["mean"] == pytest.approx(0.28 / 5)
    # symmetric
    assert oracle_gap(RETRAINED, UNLEARNED) == pytest.approx(gap)
    # the new headline metrics count once both records have them
    more = oracle_gap(dict(UNLEARNED, mia_calibrated_auc=0.7, distinguishability=0.3),
                      dict(RETRAINED, mia_calibrated_auc=0.5, distinguishability=0.0))
    assert more["mia_calibrated_auc"] == pytest.approx(0.2) and more["distinguishability"] == pytest.approx(0.3)
    assert more["mean"] == pytest.approx((0.28 + 0.2 + 0.3) / 7)


def test_a_model_closer_to_the_oracle_has_a_smaller_gap():
    forgot = {"zs_train_forget": 21.0, "zs_train_retain": 87.0, "mia_auc": 0.52}
    did_not = {"zs_train_forget": 95.0, "zs_train_retain": 90.0, "mia_auc": 0.8}
    assert oracle_gap(forgot, RETRAINED)["mean"] == pytest.approx((0.01 + 0.01 + 0.02) / 3)
    assert oracle_gap(did_not, RETRAINED)["mean"] == pytest.approx((0.75 + 0.02 + 0.3) / 3)


def test_oracle_gap_skips_missing_and_nan_values():
    unlearned = dict(UNLEARNED, zs_test_forget=math.nan, zs_train_retain=None)
    retrained = {k: v for k, v in RETRAINED.items() if k != "mia_auc"}
    gap = oracle_gap(unlearned, retrained)
    assert set(gap) == {"zs_train_forget", "zs_test_retain", "mean"}
    assert gap["mean"] == pytest.approx((0.10 + 0.01) / 2)
    assert oracle_gap(UNLEARNED, RETRAINED, keys=("mia_auc",)) == pytest.approx({"mia_auc": 0.1, "mean": 0.1})
    assert oracle_gap(UNLEARNED, RETRAINED, keys=("extra",)) == {"mean": pytest.approx(math.nan, nan_ok=True)}
    empty = oracle_gap({}, RETRAINED)
    assert list(empty) == ["mean"] and math.isnan(empty["mean"])
    # tensors and numpy scalars count as numbers
    assert oracle_gap({"mia_auc": torch.tensor(0.75)}, {"mia_auc": 0.5})["mean"] == pytest.approx(0.25)


def test_cost_record_ratio():
    record = cost_record(30.0, 200, 1024, reference_seconds=120.0)
    assert record == {"seconds": 30.0, "steps": 200, "peak_memory_bytes": 1024, "reference_seconds": 120.0,
                      "ratio_to_reference": 0.25}
    json.dumps(record)
    assert cost_record(90.0, 10, None, 60.0)["ratio_to_reference"] == pytest.approx(1.5)
    none = cost_record(5.0, 1, None, None)
    assert none["ratio_to_reference"] is None and none["peak_memory_bytes"] is None
    assert cost_record(5.0, 1, None, 0.0)["ratio_to_reference"] is None
    with pytest.raises(ValueError):
        cost_record(-1.0, 1, None, 10.0)
    with pytest.raises(ValueError):
        cost_record(1.0, -1, None, 10.0)


MB = 2**20


def _touched(size: int) -> mmap.mmap:
    """``size`` bytes of fresh anonymous memory with one write per page, so that every page is
    resident (an explicit mapping, not the heap, so no memory freed earlier is reused)."""
    block = mmap.mmap(-1, size)
    np.frombuffer(block, dtype=np.uint8)[:: mmap.PAGESIZE] = 1
    return block


def _sampler_running() -> bool:
    return any(thread.name == SAMPLER_THREAD_NAME for thread in threading.enumerate())


@pytest.mark.skipif(current_rss_bytes() is None, reason="needs /proc/self/statm")
def test_consecutive_blocks_report_their_own_peak():
    with peak_memory() as first:
        assert isinstance(first, PeakMemory) and first.cpu_bytes is None  # filled on exit
        time.sleep(0.02)  # several sampling intervals: the sampler runs until the block exits
        assert _sampler_running()
        block = _touched(200 * MB)
    block.close()
    with peak_memory() as second:
        block = _touched(20 * MB)
    block.close()
    with peak_memory() as idle:
        pass
    assert first.cpu_sampled and second.cpu_sampled and idle.cpu_sampled
    assert first.cpu_bytes == pytest.approx(200 * MB, abs=16 * MB)
    assert second.cpu_bytes == pytest.approx(20 * MB, abs=8 * MB)  # not the first block's peak
    assert idle.cpu_bytes < 4 * MB < second.cpu_bytes  # a block that allocates nothing reads (almost) nothing
    assert second.cpu_start_bytes < first.cpu_start_bytes + first.cpu_bytes  # the first block's memory was freed
    if second.cuda_bytes is None:
        assert second.peak_bytes == second.cpu_bytes
    else:
        assert second.peak_bytes == second.cuda_bytes


@pytest.mark.skipif(current_rss_bytes() is None, reason="needs /proc/self/statm")
def test_the_sampler_sees_a_peak_freed_inside_the_block():
    with peak_memory(interval=0.001) as peak:
        block = _touched(100 * MB)
        time.sleep(0.05)  # several sampling intervals while the memory is held
        block.close()
    assert peak.cpu_bytes == pytest.approx(100 * MB, abs=16 * MB)


def test_peak_memory_stops_the_sampler_even_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with peak_memory() as peak:
            raise RuntimeError("boom")
    assert not _sampler_running()
    assert isinstance(peak.cpu_bytes, int) and 0 <= peak.cpu_bytes < 4 * MB and peak.cpu_start_bytes > 0


def test_peak_memory_falls_back_to_the_rise_of_max_rss(monkeypatch):
    monkeypatch.setattr(oracle, "current_rss_bytes", lambda: None)
    readings = iter([300 * MB, 340 * MB, 340 * MB, 340 * MB])  # ru_maxrss on entry and exit of two blocks
    monkeypatch.setattr(oracle, "_max_rss_bytes", lambda: next(readings))
    with peak_memory() as grew:
        assert not _sampler_running()
    with peak_memory() as below_the_old_peak:
        pass
    assert grew.cpu_sampled is False and (grew.cpu_start_bytes, grew.cpu_bytes) == (300 * MB, 40 * MB)
    assert below_the_old_peak.cpu_bytes == 0  # the lifetime peak did not rise: a lower bound of 0


def test_as_number_refuses_bools():
    assert oracle.as_number(True) is None and oracle.as_number(False) is None and oracle.as_number(None) is None
    assert oracle.as_number(1) == 1.0 and oracle.as_number("0.5") == 0.5 and oracle.as_number("x") is None
    assert oracle_gap({"mia_auc": True}, {"mia_auc": 0.5}) == {"mean": pytest.approx(math.nan, nan_ok=True)}


def test_cost_record_accepts_zero_and_short_reference_times():
    assert cost_record(0.0, 0, None, 10.0)["ratio_to_reference"] == 0.0
    assert cost_record(0.25, 3, 7, 0.5)["ratio_to_reference"] == 0.5


def test_peak_bytes_prefers_the_cuda_peak():
    assert PeakMemory(cpu_bytes=1, cuda_bytes=5).peak_bytes == 5
    assert PeakMemory(cpu_bytes=1).peak_bytes == 1


def _status_kilobytes(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


@pytest.mark.skipif(current_rss_bytes() is None, reason="needs /proc/self/statm")
def test_current_rss_is_the_resident_set_size_and_sampled_in_a_daemon_thread():
    # VmRSS counts every resident page (anonymous, file and shared memory), as statm's second field
    assert current_rss_bytes() == pytest.approx(_status_kilobytes("VmRSS") * 1024, abs=4 * MB)
    with peak_memory():
        sampler = next(thread for thread in threading.enumerate() if thread.name == SAMPLER_THREAD_NAME)
        assert sampler.daemon


@pytest.mark.skipif(current_rss_bytes() is None, reason="needs /proc/self/statm")
def test_the_block_starts_from_the_current_rss_not_the_lifetime_peak():
    _touched(100 * MB).close()  # the lifetime peak is now at least 100 MB above the current RSS
    now = current_rss_bytes()
    with peak_memory() as peak:  # the default interval samples a short-lived block too
        block = _touched(100 * MB)
        time.sleep(0.05)
        block.close()
    assert peak.cpu_start_bytes == pytest.approx(now, abs=4 * MB)
    assert peak.cpu_bytes == pytest.approx(100 * MB, abs=16 * MB)


@pytest.mark.skipif(oracle.resource is None or not sys.platform.startswith("linux"), reason="needs Linux getrusage")
def test_the_fallback_reads_ru_maxrss_in_bytes(monkeypatch):
    monkeypatch.setattr(oracle, "current_rss_bytes", lambda: None)
    low = oracle.resource.getrusage(oracle.resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    with peak_memory() as peak:
        pass
    high = oracle.resource.getrusage(oracle.resource.RUSAGE_SELF).ru_maxrss
    assert peak.cpu_start_bytes % 1024 == 0 and low <= peak.cpu_start_bytes // 1024 <= high
    assert peak.cpu_start_bytes >= _status_kilobytes("VmRSS") * 1024 - 4 * MB  # a peak, not below the RSS
    monkeypatch.setattr(oracle.sys, "platform", "darwin")  # macOS reports bytes
    assert low <= oracle._max_rss_bytes() <= oracle.resource.getrusage(oracle.resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.parametrize("readings", [(None, 340 * MB), (300 * MB, None), (None, None)])
def test_the_fallback_gives_no_figure_without_both_readings(monkeypatch, readings):
    monkeypatch.setattr(oracle, "current_rss_bytes", lambda: None)
    monkeypatch.setattr(oracle, "_max_rss_bytes", iter(readings).__next__)
    with peak_memory() as peak:
        pass
    assert peak.cpu_bytes is None and peak.cpu_start_bytes == readings[0] and peak.peak_bytes is None


def _fake_cuda(monkeypatch, initialized: bool) -> list[str]:
    """CUDA available (initialised or not) with a peak counter of 12345 bytes; returns the calls made."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, name=name: calls.append(name))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *args: calls.append("read") or 12345)
    return calls


def test_the_cuda_peak_is_reset_on_entry_and_read_on_exit(monkeypatch):
    calls = _fake_cuda(monkeypatch, initialized=True)
    with peak_memory() as peak:
        assert calls == ["synchronize", "reset_peak_memory_stats"]
    assert calls[2:] == ["synchronize", "read"]
    assert peak.cuda_bytes == peak.peak_bytes == 12345


def test_cuda_that_is_not_initialised_is_left_alone(monkeypatch):
    calls = _fake_cuda(monkeypatch, initialized=False)
    with peak_memory() as peak:
        pass
    assert calls == [] and peak.cuda_bytes is None
