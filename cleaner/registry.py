"""Named registries, one per ablation axis (similarity, chat format, task template, advantage, policy loss, loss
aggregation): a dict filled by a decorator, whose lookup of an unknown name fails listing the valid ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # what an entry is, for messages: "similarity", "policy loss", ...

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(entry: Any) -> Any:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = entry
            return entry

        return deco

    def __missing__(self, name: str) -> Any:
        raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self))}")
