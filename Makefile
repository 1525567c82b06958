# Two entry points that do all set-up themselves on a fresh machine:
#   make demo   simulate a small survey and build its mosaic (demo/mosaic/)
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_SURVEY := demo/survey
DEMO_OUT := demo/mosaic

.PHONY: demo test bench clean browser slurm

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DEMO_SURVEY)/manifest.json: $(STAMP)
	$(BIN)/zdask simulate $(DEMO_SURVEY) --panels 2x2 --frames-per-panel 16 \
		--frame-size 1080x1920 --altaz-panels 1,2 --seed 1

demo: $(DEMO_SURVEY)/manifest.json
	$(BIN)/zdask run $(DEMO_SURVEY)/frames --out $(DEMO_OUT) --altaz-cleanup
	@echo "demo: open $(DEMO_OUT)/preview.png and $(DEMO_OUT)/mosaic.fits; timings in $(DEMO_OUT)/report.json"

test: $(STAMP) browser slurm
	$(BIN)/python -m pytest -q

# A real headless browser for the test that draws report.html (Debian's chromium, installed as
# root); without it that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "browser: chromium is not installed and this is not root: the report.html browser test will skip"; fi; }

# A real one-node SLURM for the cluster tests (Debian's slurm-wlm and munge, installed as root;
# tests/cluster/conftest.py starts and stops it); without them those tests skip and say why.
slurm:
	@{ command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; } || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; \
	else echo "slurm: slurm-wlm and munge are missing and this is not root: the SLURM tests will skip"; fi; }

bench: $(STAMP)
	$(BIN)/python benchmarks/stack.py

clean:
	rm -rf demo .pytest_cache
