# `make demo` runs the main job end to end; `make test` runs the test suite. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.featstore-installed

.PHONY: demo test bench install clean

demo: $(STAMP)
	$(BIN)/featstore demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_gather.py

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependencies or the C++ sources change (the editable install compiles csrc/).
$(STAMP): $(BIN)/python requirements-dev.txt pyproject.toml CMakeLists.txt $(wildcard csrc/*)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e .
	$(BIN)/python -c "import featstore; assert featstore.backend() == 'core', 'compiled core missing'"
	$(BIN)/python -c "import shutil, featstore.cuda as c; assert not shutil.which('nvcc') or c.status().built, 'nvcc is on PATH but featstore._cuda was not built'"
	touch $(STAMP)

clean:
	rm -rf build $(VENV) featstore/_core*.so featstore/_cuda*.so
