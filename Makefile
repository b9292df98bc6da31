# Two commands matter: `make run` and `make test`. Both create and reuse .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
APP     := $(VENV)/.installed-app

.PHONY: run demo test lab derive bench clean

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

# the main job: the lab as an app in your browser (Voila on 127.0.0.1), on the embedded
# digits data (no download); it prints the URL to open.  Ctrl-C stops it.
# APP_ARGS="--no-browser --port=8866" passes options to `lipschitz-lab app`.
run: $(APP)
	exec $(BIN)/lipschitz-lab app $${APP_ARGS}

# the headless walk-through: derivations, a short study on digits, HTML reports
demo: $(APP)
	$(BIN)/lipschitz-lab demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# JupyterLab's default settings for this venv (the user's own settings still win):
# open a notebook and its kernel starts, no "Select Kernel" dialog, no news prompt.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
$(LAB_OVERRIDES): jupyter/overrides.json | $(STAMP)
	mkdir -p $(dir $@)
	cp $< $@

# JupyterLab on notebooks/, on 127.0.0.1 only, behind a token; notebooks are saved without their
# outputs (jupyter/jupyter_server_config.py), so Run All and autosave leave `git status` clean.
# JupyterLab makes the token and prints the URL that carries it, http://127.0.0.1:PORT/lab?token=...:
# open that URL.
# LAB_TOKEN=... (or JupyterLab's own JUPYTER_TOKEN) chooses the token, and the first URL printed
# carries it too; LAB_ARGS="--port=9999" passes more JupyterLab options; as root it adds
# --allow-root itself.
lab: $(STAMP) $(LAB_OVERRIDES)
	@echo "JupyterLab on notebooks/: open the http://127.0.0.1:PORT/lab?token=TOKEN URL it prints below (Ctrl-C stops it)."
	@token="$${LAB_TOKEN:-$${JUPYTER_TOKEN}}"; set --; \
	if [ -n "$$token" ]; then \
		set -- "--IdentityProvider.token=$$token" "--ServerApp.custom_display_url=?token=$$token"; fi; \
	if [ "$$(id -u)" = 0 ]; then set -- "$$@" --allow-root; fi; \
	exec $(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --notebook-dir=notebooks \
		--config=$(CURDIR)/jupyter/jupyter_server_config.py "$$@" $${LAB_ARGS}

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
