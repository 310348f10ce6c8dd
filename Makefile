# The two commands that matter: `make run` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench fmt clean venv lock schema docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/bridge serve --sandbox

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/mypy
	$(BIN)/vulture

fmt: $(STAMP)
	$(BIN)/ruff format bridge tests bench
	$(BIN)/ruff check --fix bridge tests bench

# The image's pinned, hashed dependencies (requirements/*.lock), from PyPI itself: this
# machine's pip configuration (local indexes, caps) is ignored so the hashes are PyPI's.
PIP_COMPILE := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" \
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	--no-emit-index-url --index-url https://pypi.org/simple
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest release its range allows.
LOCK_ARGS ?=
lock: $(STAMP)
	$(PIP_COMPILE) $(LOCK_ARGS) -o requirements/image.lock pyproject.toml
	$(PIP_COMPILE) $(LOCK_ARGS) -o requirements/build.lock requirements/build.in

# docs/configuration.md, from the settings models.
docs: $(STAMP)
	$(BIN)/python -m bridge.configdoc docs/configuration.md

# helm/bridge/values.schema.json's `config` subtree, from the settings models.
schema: $(STAMP)
	$(BIN)/python -m bridge.chartschema helm/bridge/values.schema.json

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
