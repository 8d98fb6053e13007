# Two commands on a fresh machine: `make demo` and `make test`.
# GPU users: install a CUDA build of torch into .venv first, e.g.
#   python3 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu124
# or override TORCH_SPEC; an already installed torch that satisfies it is kept.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_SPEC ?= torch==2.13.0
DEBIAN_TOOLS := dcmtk dicom3tools plastimatch orthanc chromium
PYTEST_ARGS ?=
DEMO_DIR ?= demo_output
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench install install-dev debian-tools dataset clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate setup.cfg pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install install-dev: $(VENV)/.installed

debian-tools:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	command -v plastimatch >/dev/null || missing="$$missing plastimatch"; \
	command -v Orthanc >/dev/null || missing="$$missing orthanc"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian tools:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

test: install debian-tools
	$(PY) -m pytest $(PYTEST_ARGS)

dataset: install
	$(PY) scripts/make_test_dataset.py --out test_dataset --patients 10

demo: install
	$(PY) scripts/demo.py --output-dir $(DEMO_DIR)

bench: install debian-tools
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
