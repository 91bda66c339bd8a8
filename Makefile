# phy-bc-reason: two commands.
#   make test   create two virtual environments -- .venv (phy 2.1, the newest phy) and .venv-phy20
#               (a lab's phy 2.0b5 environment: tests/envs/phy-2.0b5.txt) -- install the project
#               and its test tools into both, the system libraries Qt and Xvfb need, then run the
#               whole test suite in each: phy 2.1 offscreen, phy 2.0b5 under Xvfb (QtWebEngine)
#   make demo   the phy 2.1 environment, then build a demo dataset, run bombcell on it, write the
#               reasons TSV and open phy (or print the explanation table without a display)
# Other targets: make screenshot-deps (adds Xvfb), make clean.
# Variables: PYTHON=python3 (interpreter for .venv), PYTHON20=$(PYTHON) (for .venv-phy20; phy 2.0b5
# imports `imp`, so Python <= 3.11), PYTEST_ARGS= (extra pytest arguments, for both runs).

PYTHON ?= python3
PYTHON20 ?= $(PYTHON)
VENV ?= .venv
VENV20 ?= .venv-phy20
PYTEST_ARGS ?=
DEMO_DIR ?= demo-data

VPY := $(VENV)/bin/python
VPY20 := $(VENV20)/bin/python
# The phy 2.0b5 environment: what a lab has (installed first), then kept as pip constraints.
ENV20 := tests/envs/phy-2.0b5.txt
# Written after a successful `pip install -e .[test,test-spikeinterface]` (the SpikeInterface
# route's tests; SpikeInterface needs numpy >= 2, so .venv-phy20 gets only .[test] and those tests
# skip there); re-install only when the packaging changes.
STAMP := $(VENV)/.phy-bc-reason-install.stamp
STAMP20 := $(VENV20)/.phy-bc-reason-install.stamp
PIP_QUIET := --quiet --progress-bar off
# QtWebEngine (phy 2.0's tables) refuses to start as root unless its sandbox is off.
WEBENGINE_ENV := $(if $(filter 0,$(shell id -u)),QTWEBENGINE_DISABLE_SANDBOX=1,)

.PHONY: test demo venv venvs system-deps test-system-deps screenshot-deps clean

# pytest exit codes: 0 all passed; 1 tests failed; 2 interrupted; 3 internal error; 4 usage
# error; 5 no tests collected.  Everything but 0 fails the target, with a message saying which.
# 5 in particular is deliberately an error, not a success: this project always has tests, so
# collecting none means the suite is broken (wrong path, a bad -k/-m in PYTEST_ARGS, ...).
# Both runs always run; the target fails if either does.  phy 2.0 cannot run offscreen (its
# OpenGL views abort with QT_QPA_PLATFORM=offscreen) and QtWebEngine needs a display: Xvfb.
test: test-system-deps $(STAMP) $(STAMP20)
	@explain() { case $$2 in \
	  0) ;; \
	  1) echo "make test ($$1): some tests failed (pytest exit 1)" >&2 ;; \
	  5) echo "make test ($$1): pytest collected no tests (exit 5); this project always has tests, so this is an error" >&2 ;; \
	  *) echo "make test ($$1): pytest did not complete (exit $$2: 2 interrupted, 3 internal error, 4 usage error)" >&2 ;; \
	esac; }; \
	echo "== make test: phy 2.1 ($(VENV), offscreen) =="; \
	status=0; QT_QPA_PLATFORM=offscreen $(VPY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	explain "phy 2.1" $$status; \
	echo "== make test: phy 2.0b5 ($(VENV20), Xvfb) =="; \
	status20=0; env PHY_BC_REASON_ENV=phy-2.0b5 QT_QPA_PLATFORM=xcb $(WEBENGINE_ENV) \
	  xvfb-run --auto-servernum --server-args="-screen 0 1920x1080x24" \
	  $(VPY20) -m pytest $(PYTEST_ARGS) || status20=$$?; \
	explain "phy 2.0b5" $$status20; \
	if [ $$status != 0 ]; then exit $$status; fi; exit $$status20

demo: system-deps $(STAMP)
	$(VPY) -m phy_bc_reason_demo $(DEMO_DIR)

venv: $(STAMP)

venvs: $(STAMP) $(STAMP20)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(VPY20):
	$(PYTHON20) -m venv $(VENV20)

$(STAMP): setup.cfg pyproject.toml | $(VPY)
	@echo "Installing phy-bc-reason (phy 2.1) and its test tools into $(VENV) (1-4 minutes: 3-4 on a fresh machine)"
	$(VPY) -m pip install $(PIP_QUIET) -e '.[test,test-spikeinterface]'
	@touch $@

# First the lab's phy 2.0b5 environment, as a user has it; then the project and its test tools
# with that environment as constraints, so that bombcell & co. come in versions that keep it.
$(STAMP20): setup.cfg pyproject.toml $(ENV20) | $(VPY20)
	@echo "Installing phy 2.0b5, phy-bc-reason and its test tools into $(VENV20) (1-4 minutes: 3-4 on a fresh machine)"
	$(VPY20) -m pip install $(PIP_QUIET) -r $(ENV20)
	$(VPY20) -m pip install $(PIP_QUIET) -c $(ENV20) -e '.[test]'
	@touch $@

# Libraries Qt/phy need (OpenGL, EGL, fontconfig, xkbcommon, dbus, xcb); installs only what is
# missing, with apt-get, as root or through sudo.  Cheap when nothing is missing.
system-deps:
	@PYTHON=$(PYTHON) bash scripts/install-system-deps.sh

# The same plus Xvfb, xauth and QtWebEngine's libraries, for the phy 2.0b5 tests.
test-system-deps:
	@PYTHON=$(PYTHON) bash scripts/install-system-deps.sh --phy20
	@if [ "$(PYTHON20)" != "$(PYTHON)" ]; then PYTHON=$(PYTHON20) bash scripts/install-system-deps.sh --phy20; fi

# Optional: Xvfb + xauth, to run (and screenshot) the real GUI without a display.
screenshot-deps:
	@PYTHON=$(PYTHON) bash scripts/install-system-deps.sh --screenshot

clean:
	rm -rf $(VENV) $(VENV20) $(DEMO_DIR) build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
