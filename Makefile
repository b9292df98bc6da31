# Two commands matter: `make run` and `make test`. Both create and reuse .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
APP     := $(VENV)/.installed-app

.PHONY: run test lab derive bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install only when the project metadata changes.  The tests need every optional
# extra (the app, Ray, Lightning); the app alone needs the core and Voila.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,app,ray,lightning]'
	touch $(STAMP) $(APP)

$(APP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[app]'
	touch $(APP)

run: $(STAMP)
	$(BIN)/lipschitz-lab demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# JupyterLab's default settings for this venv (the user's own settings still win):
# open a notebook and its kernel starts, no "Select Kernel" dialog, no news prompt.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
$(LAB_OVERRIDES): jupyter/overrides.json | $(STAMP)
	mkdir -p $(dir $@)
	cp $< $@

lab: $(STAMP) $(LAB_OVERRIDES)
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --notebook-dir=notebooks \
		--IdentityProvider.token=$${LAB_TOKEN:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(16))')} \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root) $${LAB_ARGS}

derive: $(STAMP)
	$(BIN)/lipschitz-lab derive --write derivations/

# the quick benchmarks (a few minutes); the long ones (bench_mnist_cnn, bench_whatif_mnist,
# gpu_checks) say in benchmarks/RESULTS.md how to run them
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_symbolic.py
	$(BIN)/python benchmarks/bench_scheduler_overhead.py --no-write
	$(BIN)/python benchmarks/bench_panel_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
