# divreward: every command in the README is a target here. Each target creates the
# virtual environment first when it is missing (or older than pyproject.toml).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.divreward-installed
export HF_HUB_OFFLINE ?=
PROFILE ?= real
CONFIG  ?=
DEVICE  ?=
TINY_DIR ?= .cache/tiny-models
TYPECHECK := build/typecheck

.PHONY: help venv test test-quick test-fast test-slow lint format serve demo demo-serve tiny-models bench bench-collapse \
        proto grafana compose-config k8s-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install divreward with its dev tools

test: venv lint ## lint, then every test that needs no GPU, slow ones included (what CI runs)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not gpu"

test-quick: venv lint ## lint, then the suite without the slow tests (about half the time)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not gpu and not slow"

test-fast: venv ## pure-math and model tests only (no Ray Serve)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q tests/core tests/models

test-slow: venv ## only the tests marked slow
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m "slow and not gpu"

lint: venv ## ruff check and format check, then mypy on the package, services and trainer
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# services/ and trainer/ are installed as divreward.services and divreward.trainer: mypy
	@# reads them so through a tree of links (errors name build/typecheck/divreward/...).
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/divreward
	@for f in divreward/* services trainer; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/divreward/; done
	$(BIN)/mypy $(TYPECHECK)/divreward

format: venv ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

serve: venv ## run the reward + diversity services (real weights: `divreward weights pull`; on a CPU: DEVICE=cpu)
	$(BIN)/divreward serve --profile $(PROFILE) $(if $(CONFIG),--config $(CONFIG),) $(if $(DEVICE),--device $(DEVICE),)

demo: venv ## tiny service + 3 training steps of a tiny random SD3 against it on CPU, then stop
	HF_HUB_OFFLINE=1 $(BIN)/python -m divreward.trainer.demo --tiny-dir $(TINY_DIR)

demo-serve: venv ## run the services on tiny random models (machinery only, scores meaningless)
	$(BIN)/divreward serve --profile tiny

tiny-models: venv ## build the tiny random models into $(TINY_DIR)
	$(BIN)/divreward make-tiny-models $(TINY_DIR)

bench: venv ## run the benchmarks in bench/ (results in bench/results/)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/clustering.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/serve_overhead.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/throughput.py $(THROUGHPUT_ARGS)

bench-collapse: venv ## the mode-collapse experiment: every world, method, strength and seed (< 75 min on 2 cores; bench/results/collapse/)
	HF_HUB_OFFLINE=1 $(BIN)/python -m experiments.collapse --out bench/results/collapse $(COLLAPSE_ARGS)

gpu-check: venv ## on a CUDA machine (< 8 min): every model's fp16/bf16 paths, num_gpus placement, throughput -> bench/results/gpu.md
	bench/gpu_check.sh $(GPU_CHECK_ARGS)

proto: venv ## regenerate the gRPC code from divreward/proto/divreward.proto
	$(BIN)/python -m divreward.proto.generate

grafana: venv ## regenerate deploy/grafana/divreward.json from deploy/grafana/dashboard.py
	$(BIN)/python deploy/grafana/dashboard.py

compose-config: ## validate docker-compose.yml with every profile (needs Debian's docker-compose)
	docker-compose -f docker-compose.yml config -q
	docker-compose -f docker-compose.yml --profile tiny --profile trainer config -q

k8s-check: venv ## render every kustomize overlay (kubectl) and validate the objects offline
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/deploy/test_k8s.py tests/deploy/test_images.py

clean: ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .mypy_cache .hypothesis build *.egg-info
