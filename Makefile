# The two commands of the README. Each creates .venv if missing, installs the project
# into it, then runs. PYTHON may point at another interpreter (3.10 or newer).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= data/demo

.PHONY: demo test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) cli.py demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

# Every benchmark, sized to run in under 15 minutes on 2 CPU cores; JSON in bench/results/,
# and bench/results/README_table.md, the table the README's benchmark section is copied from.
bench: $(STAMP)
	$(PY) bench/store_read.py --gb 0.3
	$(PY) bench/detect_speed.py --rounds 2
	$(PY) bench/loader_speed.py
	$(PY) bench/train_speed.py
	$(PY) bench/eval_speed.py
	$(PY) bench/checksum_cost.py --rounds 3
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) data runs .pytest_cache
