# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment on first use (torch pinned and installed first, then the package).
PYTHON ?= python3
VENV := .venv
READY := $(VENV)/.ready

.PHONY: demo test test-slow

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[test,report]'
	touch $(READY)

demo: $(READY)
	HF_HUB_OFFLINE=1 $(VENV)/bin/vlunlearn demo

test: $(READY)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

test-slow: $(READY)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -m slow
