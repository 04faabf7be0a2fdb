"""Run records: named by the hash of the resolved config minus the keys that do not change results; a finished
record is skipped; a resumed one keeps one environment entry per invocation; one process at a time."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from omegaconf import OmegaConf

from harness import records


def test_the_hash_ignores_where_results_go_and_verbosity_but_nothing_else(composed, tmp_path):
    base = records.config_hash(composed())
    assert len(base) == 12
    for same in (["quiet=true"], [f"runs_root={tmp_path}"], ["strict=true"], ["launcher=local"]):
        assert records.config_hash(composed(same)) == base, same
    for different in (["seed=1"], ["saar.gamma=0.3"], ["algo.lr=2e-4"], ["sandbox.timeout_s=3"], ["model.path=x"],
                      ["saar.from_step=100"]):
        assert records.config_hash(composed(different)) != base, different


def test_a_baseline_is_one_run_whatever_its_unused_saar_parameters(composed):
    off = [records.config_hash(composed(["saar=baseline", f"saar.gamma={g}"])) for g in (0.3, 0.5, 0.7)]
    assert len(set(off)) == 1
    assert records.config_hash(composed(["saar=baseline", "saar.from_step=100"])) == off[0]
    on = [records.config_hash(composed([f"saar.gamma={g}"])) for g in (0.3, 0.5, 0.7)]
    assert len(set(on)) == 3


def test_the_lab_model_path_names_the_exact_sft_checkpoint(composed):
    from cleaner.lab.config import SftConfig

    assert composed().model.path == f"results/lab/sft/{SftConfig().hash()}"


def test_a_record_holds_config_env_and_summary_and_a_finished_one_is_skipped(composed, tmp_path):
    cfg = composed([f"runs_root={tmp_path}", "seed=3"])
    calls = []

    def job(run_dir):
        calls.append(run_dir)
        (run_dir / "summary.json").write_text(json.dumps({"eval": {"accuracy": 0.5}}))
        return {"eval": {"accuracy": 0.5}}

    first = records.run_record(cfg, job, log=lambda s: None)
    again = records.run_record(cfg, job, log=lambda s: None)
    run_dir = tmp_path / records.config_hash(cfg)
    assert calls == [run_dir] and first == again == {"eval": {"accuracy": 0.5}}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 3
    env = json.loads((run_dir / "env.json").read_text())
    assert env["seed"] == 3 and env["git"]["commit"] and env["packages"]["torch"].startswith("2.13.0")
    assert len(env["invocations"]) == 1 and env["invocations"][0]["finished"] is True
    assert env["hardware"]["cpus"] >= 1 and env["wall_s"] == env["invocations"][0]["wall_s"]


def test_an_interrupted_record_is_resumed_and_keeps_each_invocation(composed, tmp_path):
    cfg = composed([f"runs_root={tmp_path}"])

    def killed(run_dir):
        raise KeyboardInterrupt

    def resumed(run_dir):
        (run_dir / "summary.json").write_text("{}")
        return {}

    with pytest.raises(KeyboardInterrupt):
        records.run_record(cfg, killed, log=lambda s: None)
    records.run_record(cfg, resumed, log=lambda s: None)
    env = json.loads((tmp_path / records.config_hash(cfg) / "env.json").read_text())
    assert [i["finished"] for i in env["invocations"]] == [False, True]


def test_a_second_process_on_the_same_record_waits_then_skips(composed, tmp_path):
    cfg = composed([f"runs_root={tmp_path}"])
    order = []

    def slow(run_dir):
        order.append("start")
        time.sleep(1.0)
        (run_dir / "summary.json").write_text("{}")
        order.append("end")
        return {}

    def second():
        records.run_record(cfg, lambda d: order.append("second ran") or {}, log=order.append)

    first = threading.Thread(target=records.run_record, args=(cfg, slow), kwargs={"log": lambda s: None})
    first.start()
    while not order:
        time.sleep(0.01)
    second()
    first.join()
    assert order[0] == "start" and order[1].endswith("running in another process; waiting for it")
    assert order[2] == "end" and order[3].endswith("is finished; skipping it") and "second ran" not in order


def test_the_hash_is_of_the_difference_from_the_schemas_defaults(composed, monkeypatch):
    """A field added to the schema with a default renames no run (the hash is over what differs from the schema's
    defaults); a value set away from its default is in it. Breakage checked: hashing the whole config (the new
    field renames every run)."""
    from dataclasses import field, make_dataclass

    from harness import schema

    cfg = composed(["seed=4", "saar.gamma=0.3"])
    part = records.hashed_part(cfg)
    assert part["seed"] == 4 and part["saar"] == {"gamma": 0.3}
    assert "sandbox" not in part  # the lab's sandbox is the schema's default
    before = records.config_hash(cfg)
    grown = make_dataclass("SandboxSchema", [("new_limit", int, field(default=7))], bases=(schema.SandboxSchema,))
    monkeypatch.setitem(schema.GROUPS, "sandbox", grown)
    monkeypatch.setattr(records, "GROUPS", schema.GROUPS)
    with_field = OmegaConf.create(OmegaConf.to_container(cfg))  # the same values, without the schema's types
    with_field.sandbox.new_limit = 7
    assert records.config_hash(with_field) == before
    with_field.sandbox.new_limit = 8
    assert records.config_hash(with_field) != before


@pytest.mark.parametrize("sweep, point", [("methods", ["saar=baseline", "seed=1"]),
                                          ("methods", ["saar=cleaner", "seed=2"]),
                                          ("gamma", ["saar.gamma=0.3"])])
def test_make_runs_and_a_single_run_of_the_same_config_share_one_folder(composed, sweep, point):
    """`make run` is `harness.sweep -m +sweeps=methods`; each of its jobs is named as `harness.train` names the same
    overrides, so the two never make two folders for one config."""
    make_run = next(line.strip() for line in (records.REPO / "Makefile").read_text().splitlines()
                    if "harness.sweep" in line and line.startswith("\t"))
    assert make_run == "$(PY) -m harness.sweep -m +sweeps=methods"
    assert records.config_hash(composed([f"+sweeps={sweep}", *point])) == records.config_hash(composed(point))
    assert records.config_hash(composed(point)) != records.config_hash(composed())


def test_a_filesystem_without_flock_is_refused_in_one_line(composed, tmp_path, monkeypatch):
    """Some Lustre and NFS mounts refuse flock (ENOLCK or EOPNOTSUPP). No such mount can be made here, so the
    refusal is raised at the boundary, by fcntl.flock itself. Checked red: only BlockingIOError caught (the
    OSError escaped as a traceback)."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    cfg = composed([f"runs_root={tmp_path}"])
    with pytest.raises(records.ConfigError, match=r"^runs_root=.* is on a filesystem without file locks \(flock: No "
                                                  r"locks available\).*Lustre mounted with -o flock\)$"):
        records.run_record(cfg, lambda run_dir: {}, log=lambda s: None)
