"""The code that runs and judges a session's cell, read as code: it must be out of the reach of the session's earlier
cells (the hostile side of this is test_hostile_2)."""

from __future__ import annotations

import dis

import pytest

from cleaner.sandbox import _zygote


@pytest.mark.parametrize("name", ["_holder_receive", "_judged_cell", "_report_cell", "_session_audit_hook"])
def test_the_code_that_judges_a_cell_reads_only_its_own_variables(name):
    """What runs from a holder's go to its report (and the audit hook) must not look anything up in module globals
    or closures, which an earlier cell can rewrite: every name it uses is an argument or a default bound when the
    module was loaded."""
    function = getattr(_zygote, name)
    lookups = {i.opname for i in dis.get_instructions(function)} & {
        "LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_CLOSURE", "STORE_GLOBAL"}
    assert not lookups and function.__closure__ is None and function.__kwdefaults__ is None, lookups
