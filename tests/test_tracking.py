"""The lab's experiment logger: what it writes is read back with each backend's own reader."""

from __future__ import annotations

import pytest

from cleaner.tracking import Tracker, scalars


def test_scalars_are_the_numeric_leaves_joined_by_slashes():
    """Breakage checked: booleans kept (True would log as 1.0)."""
    assert scalars({"acc": 0.5, "saar": {"splices": 3, "applied": True, "by_class": {"NameError": 2}},
                    "run": "abc", "n": None}) == {"acc": 0.5, "saar/splices": 3.0, "saar/by_class/NameError": 2.0}


def test_tensorboard_events_read_back_and_a_resumed_run_continues_them(tmp_path):
    """Steps 1-2, then a second tracker on the same folder (a resumed run) logs step 3: TensorBoard's own reader
    sees all three. Breakage checked: a tracker that writes nothing (or to another folder) reads back nothing."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = Tracker(tmp_path, ["tensorboard"], "run", {})
    first.log(1, {"accuracy": 0.25, "saar": {"splices": 2}})
    first.log(2, {"accuracy": 0.5, "saar": {"splices": 0}})
    first.close()
    resumed = Tracker(tmp_path, ["tensorboard"], "run", {})
    resumed.log(3, {"accuracy": 0.75})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("accuracy")] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert [(e.step, e.value) for e in events.Scalars("saar/splices")] == [(1, 2.0), (2, 0.0)]


def test_wandb_runs_offline_into_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(tmp_path, ["wandb"], "abc123", {"seed": 0})
    tracker.log(1, {"accuracy": 0.5})
    tracker.close()
    [run] = (tmp_path / "wandb").glob("offline-run-*-abc123")
    assert (run / "run-abc123.wandb").stat().st_size > 0


def test_an_unknown_backend_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown tracking backend .mlflow.; valid: tensorboard, wandb"):
        Tracker(tmp_path, ["mlflow"], "run", {})
