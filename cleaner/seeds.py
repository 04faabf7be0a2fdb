"""Seeds derived from names: every random draw of a run is seeded by the run seed and what the draw is for.

    derive(run_seed, "rollout", step)             -> the generator seed of one step's rollouts
    derive(run_seed, trajectory_id)               -> SAAR's draw for one trajectory (`unit`)

A derived seed depends only on its parts, never on the order in which draws happen, so a resumed or reordered run
draws the same values.
"""

from __future__ import annotations

import hashlib


def derive(*parts: object) -> int:
    """A 63-bit seed from `parts`: the first 8 bytes of the SHA-256 of their text joined by NUL, shifted right once
    (non-negative for any generator, torch's included)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def unit(*parts: object) -> float:
    """A number in [0, 1) derived from `parts` as `derive`."""
    return derive(*parts) / 2**63
