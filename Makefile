# The two commands that matter: `make run` and `make test`. Both build their own venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run test test-unit lint bench clean check-config deb demo

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "memwarden needs Python 3.11+"' \
	  || { echo "memwarden needs Python 3.11 or newer (python3 --version)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: apt-get install python3-venv"; exit 1; }
	$(PIP) install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install -e .
	@touch $@

# torch first, pinned: the CPU build of this version lies on the machine's disk, and with it installed no other
# package pulls a multi-GB CUDA build in.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install 'torch==2.13.0'
	$(PIP) install -e '.[test,train,ray]' 'ruff==0.17.6'
	@touch $@

run: $(VENV)/.installed
	$(BIN)/memwardend $(ARGS)

check-config: $(VENV)/.installed
	$(BIN)/memwardend --check-config $(ARGS)

# A tour on a simulated host (no GPU, no network; docs in README.md): ARGS=--keep leaves it up for poking.
demo: $(VENV)/.installed-test
	$(BIN)/python -m memwarden.demo $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/ruff check daemon tests bench
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(VENV)/.installed-test
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build dist daemon/*.egg-info

# dist/memwarden_<version>-1_<arch>.deb: the app in its own venv under /opt/memwarden (packaging/deb/build.sh).
deb:
	packaging/deb/build.sh
