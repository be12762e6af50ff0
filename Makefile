# Two commands set everything up on a fresh machine: `make demo` and `make test`; `make bench` runs the benchmarks.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo

.PHONY: venv demo test test-fast bench gpu-check clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	rm -rf $(DEMO)
	$(BIN)/python -m pipeline.demo prepare $(DEMO)
	$(BIN)/python cli.py scan --video-dir $(DEMO)/videos --output-dir $(DEMO)/features --pretrained $$(cat $(DEMO)/pretrained.txt)
	$(BIN)/python cli.py run --output-dir $(DEMO)/features
	$(BIN)/python cli.py status --output-dir $(DEMO)/features
	$(BIN)/python cli.py export --output-dir $(DEMO)/features --format npy
	$(BIN)/python -m pipeline.demo show $(DEMO)/features

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv  # the inner loop: no crash loops, fault suite or real-world corpus
	$(BIN)/python -m pytest -q -x -m "not slow" --ignore=tests/faults

bench: venv
	-$(BIN)/pip install -q -r requirements-bench.txt || echo "optional peers (torchcodec, decord) not installed: benchmarked without them"
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.memory 2000
	$(BIN)/python -m bench.scan 100000
	$(BIN)/python -m bench.stop
	bash scripts/with_postgres.sh $(BIN)/python -m bench.claims
	$(BIN)/python -m bench.startup
	$(BIN)/python -m bench.sources
	$(BIN)/python -m bench.index
	$(BIN)/python -m bench.ray

gpu-check: venv  # on a GPU box (one line and exit 1 without CUDA); docs/performance.md "GPU"
	$(BIN)/python -m bench.gpu_check

clean:
	rm -rf $(DEMO) features .pytest_cache
