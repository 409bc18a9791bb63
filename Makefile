# orbitmesh — every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
MODELS ?= models
ARGS   ?=

.PHONY: run test test-fast bench up down status models deps browser clean protos

# Native packages needed to build libp2p's fastecdsa dependency (source-only).
deps:
	@if ! dpkg -s libgmp-dev >/dev/null 2>&1 || ! command -v gcc >/dev/null 2>&1; then \
	  echo "installing build dependencies (gcc, libgmp-dev) with apt"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential libgmp-dev python3-venv; \
	fi

# Debian's Chromium for the console's browser test (Playwright drives it; its own
# browser download is not used).
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing Debian's chromium (the console's browser test) with apt"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[build,test]'
	touch $@

models: $(STAMP)
	$(PY) -m agent.zoo build --out $(MODELS)

## The main job: a local 24-satellite constellation answering real inference tasks.
run: models
	$(VENV)/bin/orbitmesh --models $(MODELS) run $(ARGS)

## The test suite: unit tests of mesh/, real multi-process fleets, real libp2p and onnxruntime.
test: models browser
	$(PY) -m pytest -q -p no:cacheprovider -m "not engine" $(ARGS)

## Every test that starts no process and needs no built models (all of mesh/, in-process nodes and relays): < 60 s.
## The codec fuzz properties take 100 cases each here (make test: 300); set FUZZ_EXAMPLES=300 for the full count.
## Spread over FAST_WORKERS processes (pytest-xdist; these tests share no ports, clocks or files): 44 s on 2 cores, 59 s in one.
FUZZ_EXAMPLES ?= 100
FAST_WORKERS ?= 2
test-fast: $(STAMP)
	ORBITMESH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider -m "not slow and not engine" -n $(FAST_WORKERS) $(ARGS)

bench: models
	$(PY) bench/task_overhead.py $(ARGS)

up: models
	$(VENV)/bin/orbitmesh --models $(MODELS) up $(ARGS)

down:
	$(VENV)/bin/orbitmesh down

status:
	$(VENV)/bin/orbitmesh status

clean:
	-$(VENV)/bin/orbitmesh down 2>/dev/null
	rm -rf $(VENV) $(MODELS) .fleet build *.egg-info

## Containers (docs/docker.md): the agent image, built offline with no registry.
.PHONY: image test-docker test-swarm
image: models
	deploy/build-image.sh

## The compose constellation tested for real: engine, image, up, tasks, kill/restart, teardown.
## STRESS=1 runs it beside a CPU hog on one full core; RUNS=5 repeats it, stopping at the first failure.
STRESS ?= 0
RUNS   ?= 1
test-docker: models
	@for i in $$(seq 1 $(RUNS)); do \
	  [ "$(RUNS)" = 1 ] || echo "== test-docker run $$i of $(RUNS) (STRESS=$(STRESS)) =="; \
	  STRESS=$(STRESS) deploy/test-compose.sh || exit 1; \
	done

## Docker Swarm tested for real: swarm init, stack deploy, tasks through :8080, a replica killed, stack rm.
test-swarm: models
	STRESS=$(STRESS) deploy/test-swarm.sh

## Regenerate the gRPC descriptor set from agent/serve/oip_proto/oip_service.proto (needs grpcio-tools;
## agents only read the generated .binpb, see agent/serve/oip_proto/__init__.py).  A venv of its own:
## grpcio-tools pulls a protobuf newer than libp2p allows, and a descriptor set is the same either way.
protos:
	test -x build/protoc/bin/python || $(PYTHON) -m venv build/protoc
	build/protoc/bin/python -m pip install -q 'grpcio-tools>=1.63,<2'
	build/protoc/bin/python -m grpc_tools.protoc -Iagent/serve/oip_proto \
	  --descriptor_set_out=agent/serve/oip_proto/oip_service.binpb agent/serve/oip_proto/oip_service.proto
