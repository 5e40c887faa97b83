# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install trigpt with every extra, pinned by constraints.txt.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-trigpt

.PHONY: demo test test-slow test-all bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

# Trains one model across torch, JAX and NumPy and checks them against each other (runs/demo).
demo: $(STAMP)
	$(BIN)/trigpt demo

# The fast suite; slow tests run in test-slow, and CI runs both.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# pytest exits 5 when no test carries the marker, which is not a failure.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || test $$? -eq 5

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# Every backend side by side against the machine's matmul peak (about 5 minutes).
bench: $(STAMP)
	$(BIN)/trigpt bench

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
