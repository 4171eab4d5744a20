# The two commands of the README: `make up` (set up everything, run the service) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install up demo test weights browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.14.1 and torchvision==0.29.1 are pinned in pyproject.toml; pip takes them from the local disk here.
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

weights: install
	$(BIN)/styleq weights pull vgg16-caffe

# `styleq up` pulls the default weights itself (into the user cache directory) when they are missing.
up: install
	$(BIN)/styleq up --port $(or $(PORT),8000)

demo: weights
	$(BIN)/styleq transfer ../shared/images/rainier.jpg ../shared/images/autumn-oak.jpg -o out.png --plot out-losses.png

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`, which downloads its own).
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: install browser
	# Two test processes: the fault drills mostly wait out real timeouts, on servers of their own, beside the rest.
	# Then the tests that time a job on the whole machine (marked `alone`), one at a time, with every core.
	status=0; \
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not alone" --durations=15 || status=$$?; \
	$(BIN)/python -m pytest -m alone --durations=5 || status=$$?; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache
