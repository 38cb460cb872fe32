# `make demo` runs the main job end to end; `make test` runs the test suite. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.featstore-installed

# `make test-sanitized` runs the suite against an ASan+UBSan build of featstore._core, in its own
# venv (.venv-asan) and build folder, so the normal .venv is untouched. gcc's libasan is preloaded
# into Python, with libstdc++ (ASan intercepts C++ throws only if libstdc++ is loaded at start);
# leak checking is off (CPython keeps objects alive at exit on purpose).
SAN_VENV ?= .venv-asan
SAN_ENV = LD_PRELOAD="$(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libstdc++.so.6)" ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
BUILD_ARGS ?=
RUN_ENV ?=

.PHONY: demo test lint docs test-sanitized bench install clean

demo: $(STAMP)
	$(BIN)/featstore demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The habits CI enforces: ruff (lint and format), the layer contracts (import-linter), mypy, the docs build.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict -q -d build/site

docs: $(STAMP)
	$(BIN)/mkdocs serve

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_gather.py

test-sanitized:
	$(MAKE) VENV=$(SAN_VENV) RUN_ENV='$(SAN_ENV)' \
	  BUILD_ARGS='-C cmake.define.FEATSTORE_SANITIZE=ON -C build-dir=build/sanitize' $(SAN_VENV)/.featstore-installed
	$(SAN_ENV) $(SAN_VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependencies, the C++ sources (csrc/ and its subfolders), the version
# (featstore/__init__.py's __version__, read by pyproject.toml) or the package's module list change: the
# editable install compiles csrc/ and maps each module to its file (a folder's mtime changes when a file in
# it is added, removed or renamed).
PACKAGE_DIRS := $(shell find featstore plugins/featstore_encoders -type d -not -name __pycache__)
$(STAMP): $(BIN)/python requirements-dev.txt pyproject.toml CMakeLists.txt $(wildcard csrc/*.* csrc/*/*.*) featstore/__init__.py $(PACKAGE_DIRS)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-build-isolation --no-deps $(BUILD_ARGS) -e .
	$(RUN_ENV) $(BIN)/python -c "import featstore; assert featstore.backend() == 'core', 'compiled core missing'"
	$(RUN_ENV) $(BIN)/python -c "import shutil, featstore.batches.cuda as c; assert not shutil.which('nvcc') or c.status().built, 'nvcc is on PATH but featstore._cuda was not built'"
	touch $(STAMP)

clean:
	rm -rf build $(VENV) $(SAN_VENV) featstore/_core*.so featstore/_cuda*.so
