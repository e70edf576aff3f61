# A fresh machine needs only these targets; each installs what it uses.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_FAST := -m "not slow and not docker and not cluster and not browser"
IMAGE ?= clouddetect:latest

.PHONY: setup run test test-fast bench image lint dist clean

setup: $(INSTALLED) $(BIN)/kubectl
	$(BIN)/clouddetect model fetch

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[lab,test,openvino]'
	touch $@

# The kubectl (and its kustomize) that renders deploy/k8s, pinned; see the script.
$(BIN)/kubectl: scripts/kubectl-install | $(INSTALLED)
	PYTHON=$(BIN)/python scripts/kubectl-install $(BIN)

run: setup
	$(BIN)/clouddetect serve

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest $(PYTEST_FAST)

bench: setup
	$(BIN)/python benchmarks/service_vs_raw.py
	$(BIN)/python benchmarks/memory_under_load.py --variants engine=opencv,malloc_arenas=16
	$(BIN)/python benchmarks/engines.py
	$(BIN)/python benchmarks/slow_clients.py
	$(BIN)/python benchmarks/overload.py

# The container image; starts the Docker engine and provides the base image first where missing (see scripts/).
image:
	scripts/docker-engine
	scripts/base-image
	docker build -t $(IMAGE) .

lint: $(INSTALLED)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/hadolint Dockerfile
	$(BIN)/shellcheck -x scripts/docker-engine scripts/base-image scripts/kubectl-install scripts/test-cluster $(filter-out %.md,$(wildcard deploy/cluster/*))

# The submission zip: make dist REPORT_PDF=path/report.pdf SERVICE_URL=http://NODE:30500 [VIDEO_URL=...]
DIST_ZIP ?= dist/clouddetect-submission.zip
dist: $(INSTALLED)
	$(BIN)/clouddetect lab bundle --report-pdf "$(REPORT_PDF)" --service-url "$(SERVICE_URL)" \
		$(if $(VIDEO_URL),--video-url "$(VIDEO_URL)") --out "$(DIST_ZIP)"

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache src/*.egg-info
