"""Oracle gap and cost records: closed-form values, skipped keys, the time ratio, and the peak
memory context manager."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlunlearn.evaluation.oracle import ORACLE_GAP_METRICS, PeakMemory, cost_record, oracle_gap, peak_memory

UNLEARNED = {"zs_train_forget": 10.0, "zs_train_retain": 90.0, "zs_test_forget": 5.0, "zs_test_retain": 85.0,
             "mia_auc": 0.6, "extra": 123.0}
RETRAINED = {"zs_train_forget": 20.0, "zs_train_retain": 88.0, "zs_test_forget": 0.0, "zs_test_retain": 86.0,
             "mia_auc": 0.5}


def test_metric_names_follow_the_design():
    assert ORACLE_GAP_METRICS == ("zs_train_forget", "zs_train_retain", "zs_test_forget", "zs_test_retain", "mia_auc")


def test_oracle_gap_closed_form():
    gap = oracle_gap(UNLEARNED, RETRAINED)
    expected = {"zs_train_forget": 10.0, "zs_train_retain": 2.0, "zs_test_forget": 5.0, "zs_test_retain": 1.0,
                "mia_auc": 0.1}
    assert set(gap) == set(expected) | {"mean"}  # "extra" is not a gap metric
    for key, value in expected.items():
        assert gap[key] == pytest.approx(value)
    assert gap["mean"] == pytest.approx(18.1 / 5)
    # symmetric
    assert oracle_gap(RETRAINED, UNLEARNED) == pytest.approx(gap)


def test_oracle_gap_skips_missing_and_nan_values():
    unlearned = dict(UNLEARNED, zs_test_forget=math.nan, zs_train_retain=None)
    retrained = {k: v for k, v in RETRAINED.items() if k != "mia_auc"}
    gap = oracle_gap(unlearned, retrained)
    assert set(gap) == {"zs_train_forget", "zs_test_retain", "mean"}
    assert gap["mean"] == pytest.approx((10.0 + 1.0) / 2)
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


def test_peak_memory_sees_a_large_allocation():
    size = 64 * 2**20  # 64 MiB, touched
    with peak_memory() as peak:
        assert isinstance(peak, PeakMemory) and peak.cpu_bytes is None  # filled on exit
        block = torch.ones(size // 4, dtype=torch.float32)
        assert float(block[-1]) == 1.0
    del block
    assert isinstance(peak.cpu_bytes, int) and peak.cpu_bytes >= size
    assert isinstance(peak.cpu_increase_bytes, int) and 0 <= peak.cpu_increase_bytes <= peak.cpu_bytes
    if peak.cuda_bytes is None:
        assert peak.peak_bytes == peak.cpu_bytes
    else:
        assert peak.peak_bytes == peak.cuda_bytes


def test_peak_memory_fills_in_even_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with peak_memory() as peak:
            raise RuntimeError("boom")
    assert peak.cpu_bytes is not None and peak.cpu_bytes > 0
