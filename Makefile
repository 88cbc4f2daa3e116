# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
PY_BOOT ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ARTIFACTS ?= artifacts
MODEL   ?= mobilenet_v3
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: setup run test test-slow bench engines lint clean pi-rootfs pi-bench docs depthwise guidelines estimate-fit screenshots bench-peers

setup: $(STAMP)

# Re-installs only when the pins or the project metadata change; pip finds the CPU torch wheel
# on this machine kind's disk (pip's find-links), never the multi-GB CUDA build.
$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: setup
	$(VENV)/bin/edgekit export $(MODEL) --int8 --out $(ARTIFACTS)/$(MODEL)
	$(VENV)/bin/edgekit bench $(ARTIFACTS)/$(MODEL) --threads 1 --out $(ARTIFACTS)/$(MODEL)/bench.json
	$(VENV)/bin/edgekit report $(ARTIFACTS)/$(MODEL)
	@echo "report: $(ARTIFACTS)/$(MODEL)/report.md"

test: setup
	bash scripts/test-deps.sh
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15  # two workers, a test file each (module fixtures built once), the longest files first (tests/conftest.py); the slowest listed

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) -m edgekit.studies.benchzoo --out bench
	$(VENV)/bin/edgekit report --zoo bench/results.json --out bench/dashboard.html  # one page, linked from bench/README.md
	$(PY) -m edgekit.studies.engines --out docs/engines.md  # every engine side by side (issue #17)

bench-peers: setup
	$(PY) -m edgekit.studies.peers --out bench/peers.md  # edgekit int8 vs the peers' defaults (issue #18)

engines: setup
	$(PY) -m edgekit.studies.engines --out docs/engines.md

lint: setup
	$(VENV)/bin/ruff check edgekit exporters runtimes calibration tests
	$(VENV)/bin/ruff format --check edgekit exporters runtimes calibration tests

pi-rootfs:
	bash scripts/pi-rootfs.sh

pi-bench: setup pi-rootfs
	$(PY) -m edgekit.studies.pibench --out bench/pi

docs: depthwise guidelines

# Re-fits the latency estimate on ncnn's published tables; prints the leave-one-device-out errors (~30 s).
estimate-fit: setup
	$(PY) -m edgekit.studies.estimate --fit

depthwise: setup
	$(PY) -m edgekit.studies.depthwise_doc --out docs/depthwise.md

guidelines: setup
	$(PY) -m edgekit.studies.guidelines_doc --out docs/guidelines.md

# docs/img/report.png and dashboard.png: make run's report and the committed zoo bench, in headless
# Chromium at 1280 px (scripts/test-deps.sh installs it)
screenshots: setup
	test -f $(ARTIFACTS)/$(MODEL)/bench.json || $(MAKE) run
	test -f $(ARTIFACTS)/$(MODEL)/analyze.json || ($(VENV)/bin/edgekit analyze $(MODEL) --no-end-to-end --limit 4 \
		--json > $(ARTIFACTS)/$(MODEL)/analyze.json.tmp && mv $(ARTIFACTS)/$(MODEL)/analyze.json.tmp $(ARTIFACTS)/$(MODEL)/analyze.json)
	$(VENV)/bin/edgekit report $(ARTIFACTS)/$(MODEL) --html
	$(VENV)/bin/edgekit report --zoo bench/results.json --out bench/dashboard.html
	$(PY) -m edgekit.report.browser $(ARTIFACTS)/$(MODEL)/report.html docs/img/report.png \
		bench/dashboard.html docs/img/dashboard.png

clean:
	rm -rf $(ARTIFACTS) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
