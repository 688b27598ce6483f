# The README's two commands: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup demo test lint bench clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/python -m fewlabel.demo

lint: setup
	$(BIN)/ruff check src tests bench scripts

# The report test opens report.html in Debian's headless Chromium (installed here when missing; needs root).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# One worker process per core, each test file on one worker (its module fixtures built once).
test: setup lint browser
	$(BIN)/python -m pytest -q -n auto --dist loadfile

bench: setup
	$(BIN)/python bench/feature_cache.py
	$(BIN)/python bench/engine_overhead.py
	$(BIN)/python bench/fashion_fewlabel.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
