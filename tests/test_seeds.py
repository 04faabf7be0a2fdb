"""One seed derivation (`cleaner.seeds`): its value by its definition, and no module deriving seeds its own way."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cleaner import saar, seeds

REPO = Path(__file__).resolve().parents[1]


def test_derive_is_the_first_8_bytes_of_the_sha256_of_the_nul_joined_parts_shifted_once():
    digest = hashlib.sha256(b"7\x00rollout\x003").digest()
    assert seeds.derive(7, "rollout", 3) == int.from_bytes(digest[:8], "big") >> 1
    assert seeds.derive(7, "rollout", 3) != seeds.derive(7, "rollout", 4) != seeds.derive(8, "rollout", 3)
    assert 0 <= seeds.derive("x") < 2**63 and 0 <= seeds.unit("x") < 1


def test_saars_draw_is_the_unit_of_run_seed_and_trajectory_id():
    """p = unit(seed, id) exactly splits the trajectories that SAAR applies to from those it does not."""
    u = seeds.unit(3, "traj-1")
    assert saar.applies_to(saar.SaarConfig(rollback_probability=u + 1e-12), 3, "traj-1")
    assert not saar.applies_to(saar.SaarConfig(rollback_probability=u), 3, "traj-1")


def test_no_other_module_hashes_its_own_seeds():
    """The idiom (8 bytes of a digest as an integer) lives in cleaner/seeds.py alone. Breakage checked: the four
    copies in the trainer, SAAR, the episode and the engines."""
    idiom = re.compile(r"\bdigest\(\)\[:8\]|from_bytes\(digest")
    found = [p.relative_to(REPO).as_posix() for folder in ("cleaner", "harness") for p in (REPO / folder).rglob("*.py")
             if idiom.search(p.read_text())]
    assert found == ["cleaner/seeds.py"]
