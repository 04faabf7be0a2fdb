"""Composing the harness's configs in process, as the entry points do."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from harness import cli


@pytest.fixture
def composed():
    """composed(overrides, config_name="train", hydra=False) -> the composed config (with `hydra` if asked)."""

    def compose_run(overrides=(), config_name="train", hydra=False):
        with initialize_config_dir(str(cli.CONF), version_base="1.3"):
            return compose(config_name, overrides=[*overrides, cli.searchpath_override()], return_hydra_config=hydra)

    return compose_run
