# The README's two commands: `make up` (set up everything, run the service) and `make test`;
# `make test-full` adds the tests at the real default timings and the timed large jobs (CI runs both: .ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install up demo test test-full lint weights browser clean

# Test processes for `make test`: more than this 2-core machine's cores, as most of its tests wait on real
# services, workers and jobs rather than compute (measured in docs/TESTS.md).
TEST_PROCESSES ?= 4
# Runs pytest with the given arguments; pytest's exit 5 ("no tests collected") fails the tier and says so,
# since a tier that selects nothing has lost its tests (a marker renamed, a path moved).
PYTEST := run_pytest() { $(BIN)/python -m pytest "$$@"; rc=$$?; [ $$rc -ne 5 ] || echo "error: pytest $$* collected no tests" >&2; return $$rc; }; run_pytest

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.14.1 and torchvision==0.29.1 are pinned in pyproject.toml; pip takes them from the local disk here.
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	# Bytecode, written once here and read by every process after (which may run with PYTHONDONTWRITEBYTECODE set):
	# everything but the large packages of which little is imported (torch, sympy, networkx, onnx, fontTools, and the
	# installers pip and setuptools), whose modules in use the import after it compiles. pip's compile of everything made the install 150 s on the
	# 2-core machine; this way it takes about 105 s, and the tests run as fast (docs/TESTS.md).
	$(BIN)/python -m compileall -q -j 0 -x '/site-packages/(torch|sympy|networkx|onnx|pip|setuptools|fontTools)/' \
		"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" api worker shared cli bench tests > /dev/null
	$(BIN)/python -c "import sys; sys.dont_write_bytecode = False; import torch, torchvision, styleq.worker.engine, styleq.worker.process"
	# The import hook's map (styleq.api -> api/, ...) as links, for mypy, which cannot follow the hook (pyproject.toml).
	mkdir -p $(VENV)/import-root/styleq && for folder in api cli worker shared; do ln -sfn ../../../$$folder $(VENV)/import-root/styleq/$$folder; done
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

# Everything that checks behaviour, with the fault drills' clocks shortened through settings; not the tests
# marked `full` (nor `alone`, which are part of that tier): those run in `make test-full`.
# Beside the tests, the linter, the one code format and the type checker over the whole tree (about 25 s of one
# core, which the tests' waiting leaves free), their report printed after the tests'; either failing fails
# `make test`, and one run reports both.
# Chromium's apt install (on a fresh machine) runs beside the venv's pip install: mostly waits on the network and
# the disk, the two together take little more than the longer one.
test:
	$(MAKE) --no-print-directory browser > artifacts-browser-install.log 2>&1 & browser=$$!; \
	$(MAKE) --no-print-directory install; installed=$$?; \
	wait $$browser || { cat artifacts-browser-install.log; echo "error: make browser failed" >&2; exit 1; }; \
	rm -f artifacts-browser-install.log; exit $$installed
	status=0; \
	$(MAKE) --no-print-directory lint > $(VENV)/lint.log 2>&1 & lint=$$!; \
	$(PYTEST) -n $(TEST_PROCESSES) --dist loadgroup -m "not full and not alone" --durations=25 || status=$$?; \
	wait $$lint || status=$$?; \
	echo "--- make lint:"; cat $(VENV)/lint.log; \
	exit $$status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The tests marked `full`: the fault drills at the real default timings (which give docs/SERVICE.md's fault table)
# and the large-output tests. Two processes (--dist loadgroup), then the tests that time a job on the whole
# machine (marked `alone`), one at a time, with every core. Both parts run; either failing fails it.
test-full: install browser
	status=0; \
	$(PYTEST) -n 2 --dist loadgroup -m "full and not alone" --durations=25 || status=$$?; \
	$(PYTEST) -m alone --durations=5 || status=$$?; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache
