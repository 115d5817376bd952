# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use (a few minutes:
# torch is large) and reuse it afterwards; the venv is rebuilt only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
LABEL_VENV ?= .venv-label
LABEL_STAMP := $(LABEL_VENV)/.installed
LABEL_PORT ?= 8123
LABEL_BUNDLES ?= all
LABEL_DIR ?= work_dirs/label
LABEL_WEIGHTS ?=
LABEL_ENSEMBLE ?=
# the BraTS model `make benchmark` trains: the speed benchmark's trained-weights agreement uses it when present
BRATS_BENCHMARK_MODEL := work_dirs/benchmark/brats_segmentation/models/model.pt

.PHONY: help venv test demo lint format clean-demo label label-test benchmark-speed

help:
	@echo "make demo    generate synthetic data, train, evaluate and infer with every bundle; print a results table"
	@echo "make test    run the test suite (the command CI runs)"
	@echo "make lint    ruff lint and format check"
	@echo "make format  ruff format and safe fixes"
	@echo "make label   start a MONAI Label server on 127.0.0.1:$(LABEL_PORT) with the bundles (own env: .venv-label)"
	@echo "make label-test  MONAI Label integration test (starts a server, calls /info/ and /infer/)"
	@echo "make benchmark-speed  time each bundle and its training loader against the model-zoo reference (~40 min on 2 cores)"
	@echo "make benchmark  reproduce the committed synthetic numbers (benchmarks/expected.json); BRATS_DIR=... for real data"
	@echo "make benchmark-planted  plant known faults and check that the benchmark catches each (after make benchmark)"
	@echo "make pack    zip each bundle (model-zoo layout, with common/) into dist/<name>_v<version>.zip"
	@echo "make benchmark-ensemble  folds, ensembles and TTA of every bundle, 3 seeds (hours; -ci: toy size, minutes)"
	@echo "make benchmark-networks  DynUNet, ResNet-50, DenseNet-121 beside each default (after benchmark-ensemble)"
	@echo "make mutate  mutation testing (mutmut) of the metric and label modules -> benchmarks/results/mutation.json"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-demo:
	rm -rf work_dirs/demo

# MONAI Label 0.8.5 needs its own pins (pytorch-ignite 0.4.11, numpy < 2): a second environment. It hard-links
# torch, torchvision and their CUDA packages (5.3 GB) from .venv when that has the same pins (tools/link_torch.py).
$(LABEL_STAMP): requirements-label.txt pyproject.toml
	@test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python tools/link_torch.py --source $(VENV) --target $(LABEL_VENV) --requirements requirements-label.txt
	$(LABEL_VENV)/bin/python -m pip install --quiet -r requirements-label.txt
	$(LABEL_VENV)/bin/python -m pip install --quiet --no-deps -e .
	@touch $@

label: $(LABEL_STAMP)
	$(LABEL_VENV)/bin/python tools/label_app.py --out $(LABEL_DIR) --bundles $(LABEL_BUNDLES) \
		$(if $(LABEL_WEIGHTS),--weights_from $(LABEL_WEIGHTS)) $(if $(LABEL_ENSEMBLE),--ensemble)
	$(LABEL_VENV)/bin/python -m monailabel.main start_server --app $(LABEL_DIR)/app \
		--studies $(LABEL_DIR)/studies --conf models "$$(cat $(LABEL_DIR)/models.txt)" \
		--conf zoo_source github --conf sam2 false --conf use_pretrained_model false \
		--host 127.0.0.1 --port $(LABEL_PORT)

label-test: $(LABEL_STAMP)
	$(LABEL_VENV)/bin/python -m pytest -m label tests/label

# Model-zoo archives: dist/<name>_v<version>.zip (weights only with PACK_ARGS=--with_weights).
PACK_BUNDLES ?= all
PACK_ARGS ?=
.PHONY: pack
pack: $(STAMP)
	$(PY) tools/pack_bundle.py $(PACK_BUNDLES) $(PACK_ARGS)

# Speed against the model-zoo reference configurations (benchmarks/speed/README.md); one script at a time.
benchmark-speed: $(STAMP)
	$(PY) -m benchmarks.speed.brats --out benchmarks/results/speed_brats.json \
		$(if $(wildcard $(BRATS_BENCHMARK_MODEL)),--trained_weights $(BRATS_BENCHMARK_MODEL))
	$(PY) -m benchmarks.speed.luna16 --out benchmarks/results/speed_luna16.json
	$(PY) -m benchmarks.speed.cxr --out benchmarks/results/speed_cxr.json
	@if [ -f work_dirs/benchmark/luna16_detection/models/model.pt ]; then \
		$(PY) -m benchmarks.speed.luna16_amp_agreement; \
	else echo "luna16_amp_agreement skipped: it needs the LUNA16 model of 'make benchmark'"; fi
	@if [ -f work_dirs/demo/brats_segmentation/models/model.pt ]; then \
		$(PY) -m benchmarks.speed.brats_precision; \
	else echo "brats_precision skipped: it needs the BraTS model of 'make demo'"; fi
	$(PY) -m benchmarks.speed.loader --bundle brats --out benchmarks/results/loader_brats.json
	$(PY) -m benchmarks.speed.loader --bundle luna16 --out benchmarks/results/loader_luna16.json
	$(PY) -m benchmarks.speed.loader --bundle cxr --out benchmarks/results/loader_cxr.json

# Quality benchmark (benchmarks/quality.py): every bundle's seeded synthetic demo in fp32, checked against
# benchmarks/expected.json; fails on a regression. With dataset roots in the real layout it runs the bundles'
# default (model-zoo) configs on them instead and prints our numbers beside the published ones. WEIGHTS=published
# trains nothing: it imports the publishers' files (BRATS_WEIGHTS, LUNA16_WEIGHTS, CXR14_WEIGHTS, as downloaded)
# and scores them with the bundles' evaluation on those roots (UNSAFE_UNPICKLE=1: torchxrayvision's pickled files).
BRATS_DIR ?=
LUNA16_DIR ?=
CXR14_DIR ?=
WEIGHTS ?= trained
BRATS_WEIGHTS ?=
LUNA16_WEIGHTS ?=
CXR14_WEIGHTS ?=
XRV_VARIANT ?=
UNSAFE_UNPICKLE ?=
BENCH_ARGS ?=
.PHONY: benchmark
benchmark: $(STAMP)
	$(PY) -m benchmarks.quality $(if $(BRATS_DIR),--brats_dir $(BRATS_DIR)) $(if $(LUNA16_DIR),--luna16_dir $(LUNA16_DIR)) \
		$(if $(CXR14_DIR),--cxr14_dir $(CXR14_DIR)) --weights $(WEIGHTS) \
		$(if $(BRATS_WEIGHTS),--brats_weights $(BRATS_WEIGHTS)) $(if $(LUNA16_WEIGHTS),--luna16_weights $(LUNA16_WEIGHTS)) \
		$(if $(CXR14_WEIGHTS),--cxr14_weights $(CXR14_WEIGHTS)) $(if $(XRV_VARIANT),--xrv_variant $(XRV_VARIANT)) \
		$(if $(UNSAFE_UNPICKLE),--unsafe_unpickle) $(BENCH_ARGS)

# Planted faults (benchmarks/planted.py): reuses the data and weights of `make benchmark` in work_dirs/benchmark.
PLANTED_ARGS ?=
.PHONY: benchmark-planted
benchmark-planted: $(STAMP)
	$(PY) -m benchmarks.planted $(PLANTED_ARGS)

# Folds, ensembles and TTA (benchmarks/ensemble.py): the full table, 3 training seeds of every bundle, several hours
# on 2 cores (ENSEMBLE_ARGS="--bundles cxr14_classification --seeds 1" for a part); results in
# benchmarks/results/ensemble.json. The CI-sized version runs the same protocol at toy size (2 folds, 2 epochs, one
# seed) into work_dirs/ensemble_ci: its figures mean nothing, it proves that every step and documented command runs.
ENSEMBLE_ARGS ?=
.PHONY: benchmark-ensemble benchmark-ensemble-ci
benchmark-ensemble: $(STAMP)
	$(PY) -m benchmarks.ensemble $(ENSEMBLE_ARGS)
	$(PY) -m benchmarks.ensemble_report --write

benchmark-ensemble-ci: $(STAMP)
	rm -rf work_dirs/ensemble_ci
	$(PY) -m benchmarks.ensemble --work_dir work_dirs/ensemble_ci --out work_dirs/ensemble_ci/ensemble.json \
		--seeds 0 --folds 2 --repeats 1 --n_cases 12 --size '[48,48,48]' --val_roi_size '[48,48,48]' --epochs 2 \
		--val_interval 1 --cxr_n_patients 60 --cxr_size 128 --cxr_epochs 2 --luna16_n_scans 20 \
		--luna16_test_scans 4 --luna16_folds 2 --luna16_epochs 2 --luna16_val_interval 1

# The networks the literature compares (benchmarks/networks.py): BraTS DynUNet, CXR14 ResNet-50 and DenseNet-121 beside
# each default, fold 0 of benchmark-ensemble's protocol per training seed, paired with ensemble.json's default fold 0
# (run benchmark-ensemble first, same settings); results in benchmarks/results/networks.json.
NETWORKS_ARGS ?=
.PHONY: benchmark-networks
benchmark-networks: $(STAMP)
	$(PY) -m benchmarks.networks $(NETWORKS_ARGS)

# Mutation testing of the metric and label-mapping modules (tools/mutation.py): one mutmut group at a time, staged
# outside the repository, at most MUTATE_CHILDREN test processes; fails unless each module kills >= 90% of its
# non-equivalent mutants (tools/mutation_equivalent.json lists the equivalent ones with the reason).
MUTATE_CHILDREN ?= 2
MUTATE_ARGS ?=
.PHONY: mutate
mutate: $(STAMP)
	$(PY) tools/mutation.py --max-children $(MUTATE_CHILDREN) $(MUTATE_ARGS)
