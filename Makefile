# The README's two commands: `make demo` and `make test`. Both set up everything they need
# on a fresh Debian machine (venv + pip; apt-get for qemu & co. when run as root).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: demo demo-check test test-fast bench soak venv system-deps tflite-runtime-venv models proto clean

$(STAMP): pyproject.toml
	@# Debian's python3 ships venv/ensurepip separately: install them when root and missing
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip; } || \
	  { echo "python3 venv support missing: apt-get install python3-venv" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# the Debian packages the test tiers use (qemu for the vm tier, prometheus and chromium for the fleet
# view, haproxy, iproute2...), one table in tests/system-deps.sh; needs root for apt-get, prints what
# is missing otherwise
system-deps:
	bash tests/system-deps.sh

# real MediaPipe models for tests and benches: pip download of the pinned wheel, digests checked,
# kept in ~/.cache/pifarm/models (PIFARM_MODELS_DIR overrides); a second run downloads nothing
models: venv
	$(PY) -m tests.support.models

# the inference server's gRPC stubs (checked in) from pifarm/inference/proto/grpc_predict_v2.proto
proto: venv
	PYTHON=$(PY) sh pifarm/inference/proto/regenerate.sh

# tflite-runtime needs numpy<2, so it gets a small venv of its own for its runtime tests
tflite-runtime-venv:
	bash tests/tflite_runtime_venv.sh

demo: venv
	$(VENV)/bin/pifarm demo

demo-check: venv
	$(VENV)/bin/pifarm demo --check

test: venv system-deps tflite-runtime-venv models
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv models
	$(PY) -m pytest -q -m "not vm and not slow" $(PYTEST_ARGS)

bench: venv models
	$(PY) -m bench

# soak R7 (issue 15): aggregator with 1,000 parked watchers, 3 nodes behind HAProxy under load,
# a publish with a rollout every 30 s, a node restarted every 2 min; figures to bench/soak.json
SOAK_SECONDS ?= 600
soak: venv system-deps models
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m bench.soak

clean:
	rm -rf $(VENV) .venv-tflite-runtime .pytest_cache bench/results.json
