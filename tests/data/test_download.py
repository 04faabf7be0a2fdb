"""`python -m harness.prepare_data NAME`: pinned public files downloaded through a real HTTP server on this machine
(`CLEANER_DATA_MIRROR` points the URLs at it). The real files are served where ../shared/data holds them (that
test skips elsewhere); every other behaviour is tested on a small fixture file pinned through the same `Download`
type: checksum mismatch, rerun, a wrong file in the way, an unreachable server, unknown and by-hand names,
download then convert. What stays unverified here: the real download from raw.githubusercontent.com (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cleaner import data
from cleaner.data import Download, load
from harness import prepare_data
from harness.records import REPO

FIXTURE = b'{"prompt": "Find 1 + 1.", "answer": 2}\n'  # one aime25 row in QwQ's format
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REAL_ROWS = {"aime24": 30, "aime25": 30, "math500": 500, "dapo_math_17k": 17917, "aime_1983_2023": 975}


def pin(content: bytes, path: str = "eval/aime25.jsonl") -> Download:
    return Download("example/benchmarks", COMMIT, path, hashlib.sha256(content).hexdigest(), len(content))


class Mirror:
    """A directory served over HTTP in the layout of raw.githubusercontent.com: <owner>/<repo>/<commit>/<path>."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                mirror.requests.append(self.path)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, source: Download, content: bytes) -> None:
        file = self.root / source.repo / source.commit / source.path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    served = Mirror(tmp_path / "served")
    monkeypatch.setenv("CLEANER_DATA_MIRROR", served.base)
    monkeypatch.delenv("CLEANER_DATA_ROOT", raising=False)
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def pinned(mirror, monkeypatch):
    """aime25's registry entry pointed at the fixture file, which the mirror serves."""
    source = pin(FIXTURE)
    mirror.serve(source, FIXTURE)
    monkeypatch.setitem(data.DATASETS, "aime25", dataclasses.replace(data.DATASETS["aime25"], source=source))
    return source


def run(capsys, *argv):
    """prepare_data's CLI in this process (the registry patch applies): (exit status, stdout lines, stderr lines)."""
    status = prepare_data.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.skipif(not data.SHARED_ROOT.is_dir(), reason="../shared/data is absent on this machine")
def test_the_pinned_real_files_download_and_load(mirror, tmp_path, capsys):
    """The real bytes (the shared copies) served at each registry entry's repository, commit and path: every
    downloadable set downloads, its checksum and size are the pinned ones, and it loads with its known row count.
    Checked red: a registry checksum changed by one digit (exit 1, mismatch); the URL built as repo/path/commit
    (404)."""
    names = sorted(n for n, spec in data.DATASETS.items() if isinstance(spec.source, Download))
    assert names == sorted(REAL_ROWS)
    for name in names:
        mirror.serve(data.DATASETS[name].source, (data.SHARED_ROOT / data.DATASETS[name].relpath).read_bytes())
    root = tmp_path / "data"
    status, out, err = run(capsys, *names, "--data-root", root)
    assert status == 0, err
    assert len(out) == 2 * len(names)
    for name, line, url in zip(names, out[::2], out[1::2]):
        spec = data.DATASETS[name]
        target = root / spec.relpath
        assert line == f"downloaded {name} -> {target} ({spec.source.size_bytes:,} bytes, sha256 checked)"
        assert url == f"  from {mirror.base}/{spec.source.repo}/{spec.source.commit}/{spec.source.path}"
        assert target.read_bytes() == (data.SHARED_ROOT / spec.relpath).read_bytes()
        assert target.stat().st_size == spec.source.size_bytes
        assert len(load(name, data_root=root)) == REAL_ROWS[name]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted(
        data.DATASETS[n].relpath for n in names)


def test_a_download_lands_where_the_loader_looks_and_a_rerun_skips_it(pinned, mirror, tmp_path, capsys):
    """Checked red: the existing-file check removed (the rerun downloads again: a second request, a new mtime)."""
    root = tmp_path / "data"
    status, out, err = run(capsys, "aime25", "--data-root", root)
    target = root / "aime25/aime25.jsonl"
    assert (status, err) == (0, [])
    assert out == [f"downloaded aime25 -> {target} ({len(FIXTURE)} bytes, sha256 checked)",
                   f"  from {mirror.base}/example/benchmarks/{COMMIT}/eval/aime25.jsonl"]
    assert target.read_bytes() == FIXTURE and files_under(root) == ["aime25", "aime25/aime25.jsonl"]
    assert [p.answer for p in load("aime25", data_root=root)] == ["2"]
    stamp = target.stat().st_mtime_ns
    status, out, err = run(capsys, "aime25", "--data-root", root)
    assert (status, err) == (0, [])
    assert out == [f"present aime25: {target} (sha256 as pinned; not downloaded again)"]
    assert target.stat().st_mtime_ns == stamp and len(mirror.requests) == 1


def test_other_bytes_than_the_pinned_ones_are_refused_and_nothing_is_left(pinned, mirror, tmp_path, capsys):
    """The mirror serves a changed file. Checked red: the checksum comparison removed (the file is written); the
    temporary file not removed (a .part file is left); the folders it made not removed."""
    tampered = FIXTURE.replace(b"2}", b"3}")
    mirror.serve(pinned, tampered)
    root = tmp_path / "data"
    status, out, err = run(capsys, "aime25", "--data-root", root)
    url = f"{mirror.base}/example/benchmarks/{COMMIT}/eval/aime25.jsonl"
    assert (status, out) == (1, [])
    assert err == [f"error: aime25: {url}: checksum mismatch: expected sha256 {pinned.sha256} ({len(FIXTURE)} "
                   f"bytes), got {hashlib.sha256(tampered).hexdigest()} ({len(tampered)} bytes); nothing was "
                   f"written; offline: put the file (sha256 {pinned.sha256}) at DIR/aime25/aime25.jsonl and set "
                   "CLEANER_DATA_ROOT=DIR"]
    assert not root.exists()
    (root / "aime25").mkdir(parents=True)  # a folder that was there stays, and holds nothing new
    assert run(capsys, "aime25", "--data-root", root)[0] == 1
    assert files_under(root) == ["aime25"]


def test_a_file_with_another_checksum_in_the_way_is_refused_and_kept(pinned, mirror, tmp_path, capsys):
    """Checked red: the present file overwritten (its content changes); skipped as present without its checksum."""
    target = tmp_path / "data/aime25/aime25.jsonl"
    target.parent.mkdir(parents=True)
    target.write_bytes(b'{"prompt": "mine", "answer": 7}\n')
    status, out, err = run(capsys, "aime25", "--data-root", tmp_path / "data")
    assert (status, out, len(err)) == (2, [], 1)
    actual = hashlib.sha256(target.read_bytes()).hexdigest()
    assert err[0].startswith(f"error: aime25: {target} exists with sha256 {actual}, not the expected "
                             f"{pinned.sha256} (")
    assert err[0].endswith("it is left as it is: delete or move it and run again to download the pinned file")
    assert target.read_bytes() == b'{"prompt": "mine", "answer": 7}\n' and mirror.requests == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_fails_in_one_line_with_the_offline_way(tmp_path):
    """The real CLI in a subprocess against a port nobody listens on. Checked red: OSError not caught (a
    traceback, exit 1 from Python itself: the one-line and no-traceback assertions fail)."""
    base = f"http://127.0.0.1:{closed_port()}"
    env = {**os.environ, "CLEANER_DATA_MIRROR": base}
    env.pop("CLEANER_DATA_ROOT", None)
    done = subprocess.run([sys.executable, "-m", "harness.prepare_data", "aime24", "--data-root", str(tmp_path / "d")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    source = data.DATASETS["aime24"].source
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert errors == [f"error: aime24: {base}/QwenLM/Qwen2.5-Math/{source.commit}/evaluation/data/aime24/test.jsonl: "
                      "cannot download ([Errno 111] Connection refused); offline: put the file (sha256 "
                      f"{source.sha256}) at DIR/aime24/test.jsonl and set CLEANER_DATA_ROOT=DIR"]
    assert not (tmp_path / "d").exists()


def test_a_missing_file_on_the_server_is_a_download_error(pinned, mirror, tmp_path, capsys):
    (mirror.root / pinned.repo / pinned.commit / pinned.path).unlink()
    status, _, err = run(capsys, "aime25", "--data-root", tmp_path / "data")
    assert status == 1 and err[0].startswith(f"error: aime25: {mirror.base}/example/benchmarks/{COMMIT}/eval/"
                                             "aime25.jsonl: cannot download (HTTP Error 404: File not found); ")
    assert not (tmp_path / "data").exists()


def test_an_unknown_name_lists_the_valid_ones_before_anything_is_downloaded(pinned, mirror, tmp_path, capsys):
    """Checked red: names checked one by one while downloading (aime25 is downloaded before the error)."""
    status, out, err = run(capsys, "aime25", "aime2024", "--data-root", tmp_path / "data")
    assert (status, out) == (2, [])
    assert err == ["error: unknown data set 'aime2024'; downloadable: aime24, aime25, aime_1983_2023, dapo_math_17k, "
                   "math500"]
    assert mirror.requests == [] and not (tmp_path / "data").exists()


@pytest.mark.parametrize("name, relpath, why, where", [
    ("gpqa_diamond", "gpqa-diamond/gpqa_diamond.parquet", "its authors ask that it not be redistributed",
     "Gen-Verse/Open-AgentRL-Eval"),
    ("livecodebench_v6", "livecodebench-v6/lcb_v6_2502_2505.parquet", "hidden tests", "Gen-Verse/Open-AgentRL-Eval"),
])
def test_sets_supplied_by_hand_say_where_to_get_the_file_and_how_to_pass_it(mirror, tmp_path, capsys, name, relpath,
                                                                            why, where):
    """Checked red: gpqa_diamond given a Download entry (it is then fetched, and the 404 is exit 1)."""
    status, out, err = run(capsys, "aime24", name, "--data-root", tmp_path / "data")
    assert (status, out, len(err)) == (2, [], 1)
    line = err[0]
    assert line.startswith(f"error: {name} is not downloaded by name (") and why in line and where in line
    assert f"get {relpath} from " in line and f"--eval {name}=FILE" in line
    assert f"CLEANER_DATA_ROOT=DIR with DIR/{relpath}" in line
    assert mirror.requests == []


def test_downloads_come_first_then_the_conversion_reads_them(pinned, tmp_path, capsys):
    """Checked red: the conversion run before the downloads (aime25 not found under --data-root: exit 2)."""
    root, out_dir = tmp_path / "data", tmp_path / "out"
    status, out, err = run(capsys, "aime25", "--data-root", root, "--out", out_dir, "--eval", "aime25")
    assert status == 0 and not [line for line in err if line.startswith("error")]  # verl_plugin announces itself
    assert out[0].startswith("downloaded aime25 -> ") and out[2].startswith("wrote aime25: 1 rows -> ")
    assert Path(out[2].split(" -> ")[1]).parent == out_dir


def test_the_data_folder_is_the_flag_else_the_environment_else_the_repositorys(pinned, tmp_path, monkeypatch,
                                                                               capsys):
    """Checked red: CLEANER_DATA_ROOT ignored (the file lands in the default folder)."""
    monkeypatch.setattr(data, "DOWNLOAD_ROOT", tmp_path / "repo_data")
    assert prepare_data.data_folder(None) == tmp_path / "repo_data"
    assert run(capsys, "aime25")[0] == 0
    assert (tmp_path / "repo_data/aime25/aime25.jsonl").read_bytes() == FIXTURE
    monkeypatch.setenv("CLEANER_DATA_ROOT", str(tmp_path / "env_data"))
    assert prepare_data.data_folder(None) == tmp_path / "env_data"
    assert prepare_data.data_folder(tmp_path / "flag") == tmp_path / "flag"
    assert run(capsys, "aime25")[0] == 0
    assert files_under(tmp_path / "env_data") == ["aime25", "aime25/aime25.jsonl"]


def test_the_cli_still_needs_something_to_do_and_out_for_a_conversion(capsys):
    with pytest.raises(SystemExit) as e:
        prepare_data.main([])
    assert e.value.code == 2
    assert "nothing to do: give NAMEs to download and/or --train / --eval" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare_data.main(["--eval", "aime24"])
    assert "give --out DIR" in capsys.readouterr().err


def test_a_pin_must_be_a_full_commit_and_a_full_checksum():
    """A short commit could collide and a branch could move: the registry refuses both at import."""
    with pytest.raises(ValueError, match=r"commit 'a45202bd16f1' is not 40 lower-case hex digits"):
        Download("QwenLM/Qwen2.5-Math", "a45202bd16f1", "x.jsonl", "0" * 64, 1)
    with pytest.raises(ValueError, match=r"sha256 'main' is not 64 lower-case hex digits"):
        Download("QwenLM/Qwen2.5-Math", COMMIT, "x.jsonl", "main", 1)
    assert pin(b"x").url("https://example.org/") == f"https://example.org/example/benchmarks/{COMMIT}/eval/aime25.jsonl"


def test_without_a_mirror_the_url_is_githubs(monkeypatch):
    monkeypatch.delenv("CLEANER_DATA_MIRROR", raising=False)
    assert data.DATASETS["aime25"].source.url() == ("https://raw.githubusercontent.com/QwenLM/QwQ/"
                                                    "620a5eadc89ff464d339367dd9c9973a93215c81/eval/data/aime25.jsonl")
