# wit: every target sets up the virtual environment it needs from pyproject.toml, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WIT := $(VENV)/bin/wit
STAMP := $(VENV)/.installed-stamp

# make download shards=<lists> [out=<dir or s3://...>] [args="--processes 8 ..."]
shards ?=
out ?= data/raw
args ?=

.PHONY: venv test demo download bench-ingest clean help

help:
	@echo "make demo       run the main job end to end on the embedded default (offline)"
	@echo "make test       run the test suite"
	@echo "make download shards=<lists> [out=<dir|s3://...>] [args='...']   crawl URL-caption lists into shards"
	@echo "make bench-<name>   run bench/<name>.py against its anchor (see bench/README.md)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pytest -q tests

demo: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m ingest.demo $(args)

download: venv
	@test -n "$(shards)" || { echo "usage: make download shards=<lists> [out=<dir|s3://...>]" >&2; exit 2; }
	NO_ALBUMENTATIONS_UPDATE=1 $(WIT) download "$(shards)" --out "$(out)" $(args)

bench-%: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) bench/$*.py $(args)

clean:
	rm -rf $(VENV) demo-out .pytest_cache
