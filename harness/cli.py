"""What the entry points share (`cli.main`): overrides checked against the schema (Hydra's own message for an
unknown key does not list the valid ones), sweep files found from any folder, and ConfigError printed as one line
with exit status 2 instead of a traceback. The schema registers itself when `harness.schema` is imported."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from harness import schema
from harness.records import REPO

CONF = REPO / "harness" / "conf"


def searchpath_override() -> str:
    """Makes `sweeps/` the config group `sweeps` (`+sweeps=gamma`), wherever the command runs from."""
    return f"hydra.searchpath=[file://{REPO}]"

_KEY = re.compile(r"^[A-Za-z_][\w.]*$")
_GROUPS = (*schema.GROUPS, "launcher", "preset")  # `group=option` arguments: Hydra checks the option


def unknown_key(key: str) -> str | None:
    """Why the dotted `key` is not in the run schema, naming the valid keys at that level; None if it is."""
    cls: Any = schema.RunSchema
    path: list[str] = []
    for part in key.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return None  # inside a dict field (data.eval_paths.<name>, search.space.<key>): any key is valid
        fields = typing.get_type_hints(cls)
        if part not in fields:
            where = ".".join(path) or "the config"
            return f"unknown key {key!r}: {where} has no {part!r}; valid keys: {', '.join(fields)}"
        cls = fields[part]
        cls = next((a for a in typing.get_args(cls) if a is not type(None)), cls)  # Optional[X] -> X
        path.append(part)
    return None


def _sets_a_search(arg: str) -> bool:
    """Whether an argument gives the run a search: `search=...`, or a sweep file (`+sweeps=NAME`) that has one."""
    key, _, value = arg.lstrip("+~").partition("=")
    if key == "search":
        return True
    sweep = REPO / "sweeps" / f"{value}.yaml"
    return key == "sweeps" and sweep.exists() and "\nsearch:" in "\n" + sweep.read_text()


def check_overrides(argv: list[str]) -> None:
    """Exit with status 2 and one message if a `key=value` argument names a key the schema lacks. Group choices
    (`model=qwen3_4b`) and Hydra's own keys are left to Hydra, which lists the valid options itself."""
    searching = any(_sets_a_search(arg) for arg in argv)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if key.startswith(("hydra.", "+", "~")) or not _KEY.match(key) or "." not in key and key in _GROUPS:
            continue
        problem = unknown_key(key)
        if not problem and key.startswith("search.") and not searching:  # `search` is None until a sweep sets it
            problem = f"{key} sets a search, which has no space yet: start from +sweeps=optuna (sweeps/optuna.yaml)"
        if problem:
            print(f"error: {problem}", file=sys.stderr, flush=True)
            sys.exit(2)


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, with a ConfigError turned into `error: <message>` and exit status 2."""
    try:
        return fn(*args)
    except schema.ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def main(run: Callable[[DictConfig], Any], job: str, config: str = "train") -> Any:
    """The command line of an entry point: `if __name__ == "__main__": cli.main(run, "train")`. Checks the
    arguments, composes `harness/conf/<config>.yaml` with them (`+sweeps=NAME` reads `sweeps/NAME.yaml`) and calls
    `run(cfg)` once per run (`-m` sweeps); `job` names Hydra's job (its log file, submitit's job name)."""
    check_overrides(sys.argv[1:])
    sys.argv += [searchpath_override(), f"hydra.job.name={job}"]

    def task(cfg: DictConfig) -> Any:
        return guarded(run, cfg)

    return hydra.main(config_path=str(CONF), config_name=config, version_base="1.3")(task)()
