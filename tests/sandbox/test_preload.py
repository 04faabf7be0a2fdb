"""`preload_modules`: modules imported once in each worker's supervisor (numpy and sympy on the cluster, as the
paper's executor), so that model code imports them for free; the lab's default stays the standard library only."""

from __future__ import annotations

import pytest

from cleaner.sandbox import SandboxConfig, SandboxPool

pytestmark = pytest.mark.asyncio

USE_BOTH = (
    "import sys, os\n"
    "print(all(name in sys.modules for name in ('numpy', 'sympy')))\n"  # imported before the cell's own import
    "import numpy, sympy\n"
    "print(int(numpy.ones((300, 300)) @ numpy.ones(300) @ numpy.ones(300)), sympy.factorint(360))\n"
    "print(len(os.listdir('/proc/self/task')))\n"  # no thread pool came with them
)


async def test_bwrap_preloaded_numpy_and_sympy_are_imported_before_the_cell(pools):
    """Breakages checked: `_preload` not called (the first line False), the thread variables unset before the
    import (OpenBLAS started threads: the supervisor refused to start), site-packages not mounted (numpy not
    found by the supervisor: the pool did not start)."""
    pool = await pools.start(backend="bwrap", preload_modules=("numpy", "sympy"), timeout_s=10.0)
    assert pool.isolation["preloaded"] == ["numpy", "sympy"]
    result = await pool.run(USE_BOTH)
    assert (result.status, result.stdout) == ("ok", "True\n90000 {2: 3, 3: 2, 5: 1}\n1\n"), result
    async with pool.session() as session:  # and in a session: the state is a fork of a fork of the supervisor
        assert (await session.run("import numpy\nm = numpy.arange(6).reshape(2, 3)")).status == "ok"
        shown = await session.run("import sympy\nprint(m.sum(), sympy.Rational(1, 3) + sympy.Rational(1, 6))")
    assert (shown.status, shown.stdout) == ("ok", "15 1/2\n"), shown


async def test_bwrap_without_preloading_model_code_cannot_import_them(bwrap_pool):
    """The default, the lab's: the standard library only; numpy and sympy are not on the cells' path (the
    trainer's site-packages are not mounted). Breakage checked: the site-packages mounted always (imported)."""
    for name in ("numpy", "sympy"):
        result = await bwrap_pool.run(f"import {name}")
        assert (result.status, result.error_type) == ("error", "ModuleNotFoundError"), result
        assert result.stderr.rstrip().endswith(f"ModuleNotFoundError: No module named '{name}'")


async def test_preloading_a_module_that_is_not_installed_fails_at_start_naming_it():
    with pytest.raises(ValueError, match="sandbox.preload_modules: 'no_such_module_xyz' is not installed for"):
        await SandboxPool(SandboxConfig(workers=1, preload_modules=("no_such_module_xyz",))).start()
