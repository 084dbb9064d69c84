# The two set-up commands of the README: `make demo` and `make test`.
# Each creates (or reuses) .venv in the checkout, installs everything, then runs its job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow clean

$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The demo domain is named here, not in the core: EDM's molecule model on the bundled QM9 subset.
DEMO_DOMAIN ?= molecules

demo: $(STAMP)
	$(VENV)/bin/sciddpm demo --domain $(DEMO_DOMAIN) --max-steps 400 --n-samples 200

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
