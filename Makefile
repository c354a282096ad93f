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
# make corpus config=<pipeline.toml> [args="--plan" | args="--from balance" | args="--set balance.t=40000"]
config ?=
# make test [test_workers=N]: pytest-xdist processes; each test file runs whole in one of them (its module fixtures once)
test_workers ?= 2

.PHONY: venv lock test test-spark test-fallback lint demo corpus download clean help
# bench-% is a pattern rule: naming a bench target .PHONY would make make skip it (and silently do nothing)

help:
	@echo "make demo       run the main job end to end on the embedded default (offline): wit pipeline wit/demo.toml"
	@echo "make corpus config=<pipeline.toml> [args='--plan']   lists -> shards -> audit (-> train), resumable"
	@echo "make test       run the test suite"
	@echo "make test-spark the crawl on pyspark (installs the spark extra; needs Java)"
	@echo "make test-fallback   the tests whose data falls back without ../shared/data, run that way (CI)"
	@echo "make lock       move requirements.lock (the versions make venv installs) to today's releases, on purpose"
	@echo "make lint       ruff (pyflakes rules) over the code"
	@echo "make download shards=<lists> [out=<dir|s3://...>] [args='...']   crawl URL-caption lists into shards"
	@echo "make bench-<name>   run bench/<name>.py against its anchor (see bench/README.md)"
	@echo "make queries | match pool=<files> | balance [t=20000]   query-based curation (filters/README.md)"
	@echo "make filter-text | filter-images | dedup   verdicts on a crawl (filters/README.md)"
	@echo "make train args='--data ...' [nproc=N]   torchrun on all local GPUs, or nproc gloo ranks on CPU"
	@echo "make eval task=zeroshot args='--data ... --checkpoint ...'   zero-shot, retrieval, linear probe"
	@echo "make test-trainer | test-eval   one wing's tests"

# requirements.lock: the exact versions CI tested, as pip constraints (they cap what pip picks and install nothing
# by themselves, so a platform's own extras, e.g. CUDA wheels, are simply not needed elsewhere). `make lock` moves
# them on purpose: a fresh venv resolves pyproject.toml's ranges today, and its freeze becomes the new lock; then
# `rm -rf .venv && make test` before committing it.
LOCK := requirements.lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c $(LOCK) -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,spark]'
	{ echo "# pip constraints: the versions CI tested. Written by 'make lock' on $$(date -u +%F)"; \
	  echo "# ($$(.lock-venv/bin/python -c 'import platform; print("Python", platform.python_version(), platform.machine())')). Do not edit; see the Makefile."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check | LC_ALL=C sort -f; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .lock-venv

lint: venv
	$(PY) -m ruff check .

test: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pytest -q -m "not spark" -n $(test_workers) --dist loadfile tests

# the crawl on pyspark (local[2], Java 17): the `spark` extra, about 2 minutes on the shared 2 cores
test-spark: venv
	$(PY) -m pip install -q --disable-pip-version-check -c $(LOCK) -e '.[test,spark]'
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pytest -q -m spark tests

# The tests marked data_fallback (tests/conftest.py) as a fresh clone with no ../shared/data runs them
test-fallback: venv
	WIT_SHARED_DATA=/nonexistent NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pytest -q -m "data_fallback and not spark" tests

demo: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m wit.demo $(args)

corpus: venv
	@test -n "$(config)" || { echo "usage: make corpus config=<pipeline.toml> [args='--plan']  (README.md, 'Your list in five minutes')" >&2; exit 2; }
	NO_ALBUMENTATIONS_UPDATE=1 $(WIT) pipeline "$(config)" $(args)

download: venv
	@test -n "$(shards)" || { echo "usage: make download shards=<lists> [out=<dir|s3://...>]" >&2; exit 2; }
	NO_ALBUMENTATIONS_UPDATE=1 $(WIT) download $(shards) --out "$(out)" $(args)

bench-%: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) bench/$(subst -,_,$*).py $(args)

clean:
	rm -rf $(VENV) demo-out .pytest_cache

# ---- trainer (issue 6) ------------------------------------------------------------------------------------
# make train args="--data 's3://bucket/shards/{00000..00099}.tar' --model ViT-B-32 --steps 10000" [nproc=N]
# One node: all local GPUs (NCCL), or one gloo rank on CPU; multi-node: see trainer/README.md.
nproc ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | wc -l); [ "$$n" -gt 0 ] && echo $$n || echo 1)

.PHONY: train test-trainer

train: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(VENV)/bin/torchrun --standalone --nproc_per_node $(nproc) -m wit.trainer.train $(args)

test-trainer: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pytest -q tests/test_trainer_*.py

# GPU bench (issues 25, 26): make gpu-pack writes .gpuwheels/ (the wheels the device lacks) and bench/out/gpu-pack/
# (CIFAR-10 through wit shards write) and prints the carry's size; the device runs `bash bench/gpu.sh [--phase learn]`
# (bench/README.md, "GPU"); make bench-gpu args=--smoke tries call 1 on CPU (args="--smoke --phase learn": call 2)
.PHONY: gpu-pack

gpu-pack: venv
	$(PY) bench/gpu.py --make-pack

# ---- query-based curation (filters/): make queries; make match pool=<parquet>; make balance [t=20000] ----------
queries_file ?= data/queries.parquet
pool ?=
matches ?= data/matches
selection ?= data/selection
t ?= 20000
seed ?= 0

.PHONY: queries match balance

queries: venv
	$(WIT) queries build --out "$(queries_file)" $(args)

match: venv
	@test -n "$(pool)" || { echo "usage: make match pool=<crawl manifests, or URL lists in any format> [matches=<dir>]" >&2; exit 2; }
	$(WIT) curate match "$(pool)" --queries "$(queries_file)" --out "$(matches)" $(args)

balance: venv
	$(WIT) curate balance "$(matches)" --out "$(selection)" --t $(t) --seed $(seed) $(args)

# ---- evaluation (issue 7): make eval [task=zeroshot|retrieval|linear-probe] args="--data ... --checkpoint FILE"
# e.g. make eval args="--data ../shared/data/cifar10/test.tar --prompts cifar10 --checkpoint runs/wit/checkpoints"
task ?= zeroshot

.PHONY: eval test-eval

eval: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(WIT) eval $(task) $(args)

test-eval: venv
	NO_ALBUMENTATIONS_UPDATE=1 $(PY) -m pytest -q -p no:logging tests/test_eval_*.py

# ---- filters and dedup (issue 4) -----------------------------------------------------------------------------
# make filter-images [raw=data/raw] [eval_sets="../shared/data/cifar10/test.tar"] ; make dedup [near_k=2]
# make filter-text pool=<parquet lists or manifests>          (see `wit filter --help`, `wit dedup --help`)
raw ?= data/raw
images_verdicts ?= data/verdicts/images
dedup_verdicts ?= data/verdicts/dedup
text_verdicts ?= data/verdicts/text
eval_sets ?=
near_k ?= 2

.PHONY: filter-images dedup filter-text

filter-images: venv
	$(WIT) filter images "$(raw)" --out "$(images_verdicts)" $(foreach e,$(eval_sets),--eval "$(e)") $(args)

dedup: venv
	$(WIT) dedup "$(images_verdicts)" --out "$(dedup_verdicts)" --near-k $(near_k) \
		$(if $(wildcard $(text_verdicts)),--after "$(text_verdicts)") $(args)

filter-text: venv
	@test -n "$(pool)" || { echo "usage: make filter-text pool=<parquet files/folder with uid,url,caption>" >&2; exit 2; }
	$(WIT) filter text "$(pool)" --out "$(text_verdicts)" $(args)
