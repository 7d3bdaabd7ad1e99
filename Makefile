# ChurnOps: every target installs what it needs by itself.
# `make help` lists the targets.

SHELL := /bin/bash
PYTHON ?= python3
export PIPENV_VENV_IN_PROJECT := 1
export PIPENV_NOSPIN := 1
export PIPENV_IGNORE_VIRTUALENVS := 1
PIPENV := $(PYTHON) -m pipenv
RUN := $(PIPENV) run
# The package's own pyproject too: a changed console script needs a reinstall.
VENV_STAMP := .venv/.installed-$(shell cat Pipfile.lock code/pyproject.toml | sha256sum | cut -c1-12)
CHURN_DATA_DIR ?= data
export CHURN_DATA_DIR
DATA_FILES := data/customer_churn_0.csv data/customer_churn_1.csv data/customer_churn_2_majority_drifted.csv
TRIALS ?= 0

.PHONY: help install data register-model train demo up test test-unit test-rest lane-integration \
	lane-others quality format \
	optuna-dashboard benchmark-model benchmark-features benchmark-latency benchmark-pipeline \
	benchmark-recovery benchmark-retraining \
	simulate-file-drops status screenshots rehearse-aws docs clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-22s %s\n", $$1, $$2}'

install: $(VENV_STAMP) ## Install the locked environment (.venv) with pipenv

$(VENV_STAMP): Pipfile.lock
	@$(PYTHON) -m pipenv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --user --quiet pipenv
	@echo "Installing the locked environment into .venv (about 3 GB of disk; a few minutes on a first run)..."
	@# --no-compile: pip byte-compiles all 41,600 modules (39 s of a 70 s install here); Python
	@# compiles the few thousand a run imports on first use (about 10 s), once.
	$(PIPENV) install --deploy --dev --extra-pip-args=--no-compile
	@rm -f .venv/.installed-* && touch $@

data: $(DATA_FILES) ## Fetch and split the UCI churn data into data/

$(DATA_FILES): | $(VENV_STAMP)
	$(RUN) churnops data fetch --target data

register-model train: install data ## Train XGBoost, log to MLflow, register, gate the alias (TRIALS=n to search)
	$(RUN) churnops train --data data/customer_churn_0.csv --trials $(TRIALS)

demo: install data ## Start the local platform (churnops up; Ctrl-C stops); trains only without a staging model
	$(RUN) churnops up

up: demo ## Start the local platform; trains only when no model has the staging alias

INTERVAL ?= 30
simulate-file-drops: install data ## Drop every data file but the training one, INTERVAL s apart
	$(RUN) python upload_simulation_script.py --interval $(INTERVAL)

status: install ## Files by stage and the health of the platform's services
	$(RUN) churnops status

screenshots: install data ## README pictures (docs/screenshots/) of the running demo; needs Debian's chromium
	$(RUN) python -m devtools.screenshots

test: test-unit test-rest ## Install and run every tier: unit first, then the rest

test-unit: install ## The unit tier (tests/unit): no data files, no services
	$(RUN) pytest tests/unit

# Two lanes at once, each a pytest session of its own (its own servers): most of a test
# waits on a server or a subprocess, so two share the 2 cores of a small machine well.
test-rest: install data ## Every tier but unit, in two lanes at once; prints the slowest tests
	$(MAKE) --no-print-directory -j2 --output-sync=target lane-integration lane-others

# test_cli runs in the other lane, to even the two out (about 25 s; that lane already
# starts the Postgres and moto it uses): the integration lane was the longer by 40 s.
lane-integration:
	$(RUN) pytest tests/integration --ignore=tests/integration/test_cli.py --durations=10

lane-others:
	$(RUN) pytest tests/model tests/platform tests/terraform tests/grafana \
		tests/integration/test_cli.py --durations=10

quality: install ## Lint and format checks (pre-commit hooks on every file)
	$(RUN) pre-commit run --all-files

format: install ## Format the code
	$(RUN) ruff format code tests benchmarks upload_simulation_script.py
	$(RUN) ruff check --fix code tests benchmarks upload_simulation_script.py

optuna-dashboard: install ## Open the training search's Optuna study in optuna-dashboard (PORT=n, 0: a free one)
	$(RUN) python -m devtools.optuna_dashboard $(if $(PORT),--port $(PORT))

benchmark-model: install data ## Our staging model beside the reference project's model, same files
	$(RUN) python -m benchmarks.model_quality

benchmark-features: install data ## Cross-validated F1 with each feature dropped (feature choice evidence)
	$(RUN) python -m benchmarks.feature_selection

benchmark-latency: install data ## Drop-to-processed latency on the local platform (p50/p95)
	$(RUN) python -m benchmarks.latency

benchmark-recovery: install data ## Crash-to-processed time and a 30-file burst with 1 and N runners (local platform)
	$(RUN) python -m benchmarks.recovery

benchmark-retraining: install data ## F1 on synthetic file 3 after dropping synthetic 1, 2, 3 with RETRAIN_MODE=auto beside retraining off
	$(RUN) python -m benchmarks.retraining

benchmark-pipeline: install data ## Flow time and peak RSS on 1,050, 1M and 10M rows beside the floor (pyarrow read, booster, CSV write)
	$(RUN) python -m benchmarks.pipeline $(if $(ROWS),--rows $(ROWS))

rehearse-aws: install data ## Apply to moto, run every ECS container here as a process, push a file through the wiring
	$(RUN) python -m terraform.scripts.rehearse

docs: install ## Regenerate docs/configuration.md from the settings' descriptions
	$(RUN) python -m devtools.configuration_reference

# Refused while `churnops up` runs on .churnops or CHURNOPS_HOME: its servers would go on
# without their databases. A CHURNOPS_HOME elsewhere is a folder the user named (it may be
# $HOME): it is kept, with a line saying how to remove it.
clean: ## Remove .churnops (MLflow, Optuna, metrics, drop folder) unless the platform runs on it; keeps a CHURNOPS_HOME elsewhere
	@for home in .churnops "$${CHURNOPS_HOME:-.churnops}"; do \
		pid=$$(cat "$$home/platform.pid" 2>/dev/null); \
		if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null; then \
			echo "error: the platform runs on $$home (pid $$pid): stop it (Ctrl-C in its terminal), then make clean" >&2; \
			exit 1; \
		fi; \
	done
	rm -rf .churnops
	@if [ "$$(realpath -m "$${CHURNOPS_HOME:-.churnops}")" != "$$(realpath -m .churnops)" ]; then \
		echo "kept CHURNOPS_HOME $$CHURNOPS_HOME: remove it yourself with rm -rf $$CHURNOPS_HOME"; \
	fi

-include terraform/aws.mk
