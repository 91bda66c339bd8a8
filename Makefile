# phy-bc-reason: two commands.
#   make test   create .venv, install the project and its test tools, the system libraries Qt
#               needs, then run the whole test suite (offscreen, no display needed)
#   make demo   same environment, then build a demo dataset, run bombcell on it, write the
#               reasons TSV and open phy (or print the explanation table without a display)
# Other targets: make screenshot-deps (adds Xvfb), make clean.
# Variables: PYTHON=python3 (interpreter for the venv), PYTEST_ARGS= (extra pytest arguments).

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
DEMO_DIR ?= demo-data

VPY := $(VENV)/bin/python
# Written after a successful `pip install -e .[test]`; re-install only when the packaging changes.
STAMP := $(VENV)/.phy-bc-reason-install.stamp

.PHONY: test demo venv system-deps screenshot-deps clean

# pytest exit codes: 0 all passed; 1 tests failed; 2 interrupted; 3 internal error; 4 usage
# error; 5 no tests collected.  Everything but 0 fails the target, with a message saying which.
# 5 in particular is deliberately an error, not a success: this project always has tests, so
# collecting none means the suite is broken (wrong path, a bad -k/-m in PYTEST_ARGS, ...).
test: system-deps $(STAMP)
	@status=0; QT_QPA_PLATFORM=offscreen $(VPY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	case $$status in \
	  0) ;; \
	  1) echo "make test: some tests failed (pytest exit 1)" >&2 ;; \
	  5) echo "make test: pytest collected no tests (exit 5); this project always has tests, so this is an error" >&2 ;; \
	  *) echo "make test: pytest did not complete (exit $$status: 2 interrupted, 3 internal error, 4 usage error)" >&2 ;; \
	esac; \
	exit $$status

demo: system-deps $(STAMP)
	$(VPY) -m phy_bc_reason_demo $(DEMO_DIR)

venv: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(VPY)
	@echo "Installing phy-bc-reason and its test tools into $(VENV) (1-2 minutes on a cold machine)"
	$(VPY) -m pip install --quiet --progress-bar off -e '.[test]'
	@touch $@

# Libraries Qt/phy need (OpenGL, EGL, fontconfig, xkbcommon, dbus, xcb); installs only what is
# missing, with apt-get, as root or through sudo.  Cheap when nothing is missing.
system-deps:
	@PYTHON=$(PYTHON) bash scripts/install-system-deps.sh

# Optional: Xvfb + xauth, to run (and screenshot) the real GUI without a display.
screenshot-deps:
	@PYTHON=$(PYTHON) bash scripts/install-system-deps.sh --screenshot

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
