"""Shared test set-up: offline, and a fixed thread count so timings and reductions are stable."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
