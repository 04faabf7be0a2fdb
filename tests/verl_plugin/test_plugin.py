"""The plugin's public interface: the agent-loop YAML entry, the reward function's location, the load line, and that
the agent loop is reached through the YAML entry only (not also registered under the same name)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml
from verl.utils.import_utils import load_extern_object

from cleaner.rollout.episode import RolloutConfig
from cleaner.saar import SaarConfig
from cleaner.sandbox import SandboxConfig
from cleaner.verl_plugin import AGENT_NAME, agent_loop, agent_loop_config, reward_function
from cleaner.verl_plugin.agent_loop import loop_settings

LOAD_LINE = "cleaner.verl_plugin loaded: agent loop 'cleaner_agent' (cleaner.verl_plugin.agent_loop.CleanerAgentLoop)"


def test_agent_loop_config_is_one_plain_yaml_entry_that_round_trips():
    rollout = RolloutConfig(max_turns=8, max_response_tokens=4096,
                            saar=SaarConfig(enabled=False, gamma=0.6, rollback_probability=0.7, from_step=5))
    sandbox = SandboxConfig(timeout_s=3.0, workers=4, python_paths=("/opt/site-packages",))
    [entry] = yaml.safe_load(yaml.safe_dump(agent_loop_config(rollout, sandbox)))
    assert entry["name"] == AGENT_NAME == "cleaner_agent"
    assert entry["_target_"] == "cleaner.verl_plugin.agent_loop.CleanerAgentLoop"
    assert entry["rollout"]["saar"] == {"enabled": False, "gamma": 0.6, "max_retries": 3, "rollback_probability": 0.7,
                                        "similarity": "difflib_code", "from_step": 5}
    assert entry["sandbox"]["python_paths"] == ["/opt/site-packages"]
    assert set(entry) == {"name", "_target_", "rollout", "sandbox"}
    assert loop_settings(entry["rollout"], entry["sandbox"]) == (rollout, sandbox)


def test_reward_function_is_an_absolute_path_verl_can_load():
    path, name = reward_function()
    assert Path(path).is_absolute() and Path(path).name == "reward.py" and name == "compute_score"
    fn = load_extern_object(module_path=path, object_name=name)  # as verl's get_custom_reward_fn loads it
    assert fn(data_source="aime24", solution_str="\\boxed{7}", ground_truth="7", extra_info={})["score"] == 1.0


def test_the_agent_loop_is_not_registered_under_its_yaml_name():
    """verl's `@register(name)` would put a second entry under the name at import time; the YAML entry must be the
    only way in. Checked on the source: no decorator on the class, no `register` imported from verl."""
    tree = ast.parse(Path(agent_loop.__file__).read_text())
    [cls] = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "CleanerAgentLoop"]
    assert cls.decorator_list == []
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert "register" not in imported and "AgentLoopBase" in imported


def _import_in_fresh_process(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return done.stderr


def test_loading_prints_one_line_by_default():
    """verl leaves logging at WARNING, where an INFO record is dropped: the line goes to stderr instead."""
    stderr = _import_in_fresh_process("import logging; logging.basicConfig(level=logging.WARNING); "
                                      "import cleaner.verl_plugin")
    assert [line for line in stderr.splitlines() if "cleaner.verl_plugin loaded" in line] == [
        LOAD_LINE + f", reward function compute_score in {reward_function()[0]}"]


def test_loading_logs_at_info_when_info_is_shown():
    stderr = _import_in_fresh_process("import logging; logging.basicConfig(level=logging.INFO); "
                                      "import cleaner.verl_plugin")
    lines = [line for line in stderr.splitlines() if "cleaner.verl_plugin loaded" in line]
    assert len(lines) == 1 and lines[0].startswith("INFO:cleaner.verl_plugin:" + LOAD_LINE)
