# The two set-up commands: `make demo` and `make test`. Each makes its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint install sshd bench-data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pyproject.toml asks for ranges (edgekit installs beside a user's own torch); constraints.txt holds the exact
# versions of this venv. torch 2.14.1 + torchvision 0.29.1 come from PyPI (CUDA build, ~5.5 GB, they run on CPU).
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

data/digits/test_batch: | $(VENV)/.installed
	$(BIN)/edgekit data digits data/digits

runs/resnet20x2-digits.pt: deploy.toml data/digits/test_batch | $(VENV)/.installed
	$(BIN)/edgekit train

demo: install data/digits/test_batch runs/resnet20x2-digits.pt
	$(BIN)/edgekit push local

# The SSH tests' device: OpenSSH's server, and a system python3 with numpy and venv (what JetPack has);
# systemd for `systemd-analyze verify` of the agent's unit (nothing starts it here); libfuse3 for the fault
# tests' failing disk (tests/eio_fs.py).
# Installed when missing and we are root; otherwise those tests are skipped, visibly.
SSH_PACKAGES := openssh-server python3-numpy python3-venv systemd libfuse3-3
sshd:
	@missing=$$(for p in $(SSH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing $$missing: the SSH tests will be skipped"; fi; \
	fi

# The latency-target benchmark's harder data set (benchmarks/latency_prune.py --fashion): Fashion-MNIST, which
# Debian packages (no Python registry ships it; CIFAR is in none of them).
bench-data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else echo "as root: apt-get install dataset-fashion-mnist" >&2; exit 1; fi; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/vermin -t=3.8- --no-tips --violations --eval-annotations device/

test: install sshd lint
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) .edgekit runs data *.egg-info
