# make demo: train the classifier and medXGAN on the embedded phantoms (<= 15 min on 2 cores).
# make test: the test suite. Both create .venv and install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
SOURCES := pyproject.toml $(shell find src -name '*.py' -o -name '*.html' -o -name '*.js' 2>/dev/null)

.PHONY: demo test install clean

# torch first, pinned to the CPU build on disk; then the package (non-editable, so tests see
# exactly what a user installs) with a torch range that 2.13.0 already satisfies.
$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check ".[test,medical]"
	# Quantus, only for the tests that cross-check our metrics against it. Its metadata asks for
	# opencv-python, whose GUI build needs libGL (absent on headless machines); the headless build
	# provides the same cv2 module, so Quantus goes in without its declared dependencies.
	$(PY) -m pip install -q --disable-pip-version-check "opencv-python-headless>=4.8" "pandas>=2" "cachetools>=5"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "quantus>=0.6,<0.7"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/medxgan demo --out demo-out

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf demo-out build src/*.egg-info .pytest_cache
