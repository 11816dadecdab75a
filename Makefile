# ragtrace: the front door. `make up` starts the whole pipeline locally; `make test` runs every test.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RAGTRACE := $(BIN)/ragtrace
PYTEST_ARGS ?=
PROTOS := $(wildcard proto/ragtrace/v1/*.proto)
GENERATED := $(PROTOS:proto/%.proto=%_pb2.py)

.PHONY: help install venv proto infra onnx llm-model up down status test test-unit lint clean eval bench bench-device bench-scale bench-onnx load-gen drill asyncapi \
	cluster-start cluster-stop cluster-status cluster-logs cluster-check

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: venv proto infra onnx ## Everything `make test` needs: Python deps into .venv, gRPC code from proto/, servers, vLLM, the ONNX model and both LLM models into ~/.cache/ragtrace (idempotent)
	$(RAGTRACE) llm-model smollm2 tiny

venv: $(VENV)/.installed

proto: $(GENERATED) ## Generate the gRPC code from proto/ into ragtrace/v1 (generated, never edited or committed)

ragtrace/v1/%_pb2.py: proto/ragtrace/v1/%.proto $(VENV)/.installed
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. $<

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "ragtrace needs Python 3.11+"; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,tools,cpu]'
	@touch $@

onnx: venv ## Export the embedding model for the CPU backend (RAGTRACE_EMBEDDING_BACKEND) into ~/.cache/ragtrace/onnx, once
	$(BIN)/python -m embedding.export

LLM_MODELS ?=
llm-model: venv ## Make the model vLLM serves locally (RAGTRACE_LLM_LOCAL_MODEL's, default SmolLM2; LLM_MODELS="smollm2 tiny") in ~/.cache/ragtrace, once
	$(RAGTRACE) llm-model $(LLM_MODELS)

infra: ## Install every server: Kafka, MinIO, Weaviate, Redis, the Kubernetes control plane, etcd, kwok, the observability backends, vLLM and SmolLM2's GGUF (pinned in infra/local/versions.env)
	infra/local/install.sh

LLM ?=
up: venv proto onnx ## Install what the stack runs on first use, start the pipeline on 127.0.0.1, print the endpoints (LLM=vllm: with vLLM answering)
	RAGTRACE_LLM=$${RAGTRACE_LLM:-$(LLM)} $(RAGTRACE) stack up

down: ## Stop every process `make up` started, and nothing else
	@[ -x $(RAGTRACE) ] && $(RAGTRACE) stack down || echo "nothing to stop (not installed)"

status: ## Each component: up/down, port, pid, log path
	@$(RAGTRACE) stack status

test: install ## Run the whole test suite, tests/unit and the real-server tier (pytest exit 5, no tests, is a failure)
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating that as a failure"; exit 1; fi; exit $$rc

test-unit: venv proto ## The fast tier: tests/unit, no servers, well under a minute
	@rc=0; $(BIN)/pytest tests/unit $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating that as a failure"; exit 1; fi; exit $$rc

eval: venv proto ## nDCG@10 of each search mode and of BM25, dense and RRF baselines on every set in ../shared/data/eval/, through the running stack (make up)
	$(RAGTRACE) eval

bench: venv proto ## Speed and memory of the running stack (make up): bench/results/<date>-<machine>.{json,md}
	$(RAGTRACE) bench

bench-device: venv proto ## Embedding (MiniLM, bge-m3-sized) and index search in-process on the best device (CUDA when present)
	$(RAGTRACE) bench-device

bench-scale: venv ## FAISS search cost by namespace size (10k, 100k, 1M synthetic chunks), exact and approximate, in-process (SCALE_ARGS: options)
	$(RAGTRACE) bench-scale $(SCALE_ARGS)

bench-onnx: venv ## Embedding backends on this CPU (torch fp32, ONNX fp32, int8 variants): chunks/s and nDCG@10 per set
	$(RAGTRACE) bench-onnx

asyncapi: venv proto ## The AsyncAPI description of the topics, messages and headers (FastStream): docs/asyncapi.json
	$(RAGTRACE) asyncapi

drill: venv proto ## Failure drills against the running stack (make up): a table of expected, observed, verdict
	$(RAGTRACE) drill

LOAD_ARGS ?=
TARGET ?= local
load-gen: venv proto ## Locust against the running stack (make up; TARGET=kind for make cluster-start): bench/load/<time>/
	$(RAGTRACE) load-gen --target $(TARGET) $(LOAD_ARGS)

OVERLAY ?= cpu
cluster-start: ## Kind: create the cluster if missing, build and load the image, apply OVERLAY (cpu|gpu), wait
	OVERLAY=$(OVERLAY) infra/kind/cluster.sh start

cluster-stop: ## Kind: delete the cluster
	infra/kind/cluster.sh stop

cluster-status: ## Kind: nodes, pods, autoscalers
	infra/kind/cluster.sh status

CHECK_ARGS ?=
cluster-check: venv proto ## Both overlays applied to a real control plane (etcd, API server, controllers, scheduler) on simulated nodes
	infra/local/install.sh kubernetes etcd kwok
	$(BIN)/python infra/kind/clustercheck.py $(CHECK_ARGS)

cluster-logs: ## Kind: follow one service's logs (SERVICE=embedding-worker)
	infra/kind/cluster.sh logs $(SERVICE)

lint: venv proto ## ruff and mypy over the whole tree; import-linter: tools → services → core, never back
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean: down ## Stop the stack and delete its state (data, logs, credentials)
	rm -rf .state
