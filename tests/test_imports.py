"""Every module imports as a program's first import, and the console script names what is missing.

Each module is imported in a fresh interpreter, so an import cycle that a test process hides
(because some other module was imported first) still fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import implicit_transforms.plugins
import pytest

import implicit_transforms

HOSTS = ("nflows", "pyro", "matplotlib")
"""Optional packages whose absence is a skip, not a failure."""


def _modules() -> list[str]:
    names = ["implicit_transforms", "implicit_transforms.plugins"]
    for path, prefix in (
        (implicit_transforms.__path__, "implicit_transforms."),
        (implicit_transforms.plugins.__path__, "implicit_transforms.plugins."),
    ):
        names += [m.name for m in pkgutil.walk_packages(path, prefix)]
    return sorted(set(names))


MODULES = _modules()


_HEAVY = ("torch", "numpy", "nflows", "pyro", "matplotlib")

_FORKING_DRIVER = """
import json, os, sys, traceback
for host in HEAVY:
    try:
        __import__(host)
    except ImportError:
        pass
if any(m.split(".")[0] == "implicit_transforms" for m in sys.modules):
    raise SystemExit("a third-party package imported implicit_transforms")
results = {}
for name in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code, msg = 0, b""
        try:
            __import__(name)
        except BaseException:
            code, msg = 1, traceback.format_exc().encode()
        os.write(w, msg)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    results[name] = [os.waitstatus_to_exitcode(status), out]
print(json.dumps(results))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _first_import(name: str) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    return r.returncode, r.stderr


@cache
def _all_first_imports() -> dict[str, tuple[int, str]]:
    """Import every module first, each in its own process.

    Where ``os.fork`` exists, one interpreter imports the heavy third-party packages (torch,
    the hosts) and then forks a child per module: the child starts with no module of this
    package loaded, which is what an import cycle needs to show, at a fraction of the cost of
    a fresh interpreter. Elsewhere, one fresh interpreter per module, a few at a time.
    """
    if hasattr(os, "fork"):
        code = _FORKING_DRIVER.replace("HEAVY", repr(_HEAVY))
        r = subprocess.run(
            [sys.executable, "-c", code, json.dumps(MODULES)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        return {k: (v[0], v[1]) for k, v in json.loads(r.stdout.splitlines()[-1]).items()}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(MODULES, pool.map(_first_import, MODULES), strict=True))


def test_the_walk_finds_the_plugins_and_the_cli() -> None:
    for name in (
        "implicit_transforms.plugins.pyro_guides",
        "implicit_transforms.plugins.nflows_images",
        "implicit_transforms.plugins.nflows.transforms",
        "implicit_transforms.plugins.nflows.images",
        "implicit_transforms.plugins.pyro.transforms",
        "implicit_transforms.plugins.pyro.helpers",
        "implicit_transforms.plugins.pyro.distribution",
        "implicit_transforms.plugins.pyro.guides",
        "implicit_transforms.cli.main",
        "implicit_transforms.__main__",
    ):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_first_in_a_fresh_interpreter(name: str) -> None:
    returncode, stderr = _all_first_imports()[name]
    if returncode != 0:
        absent = [h for h in HOSTS if importlib.util.find_spec(h) is None]
        if absent and any(f"needs {h}" in stderr.lower() for h in absent):
            pytest.skip(f"optional host missing: {absent}")
    assert returncode == 0, stderr[-3000:]


# -- python -m implicit_transforms -----------------------------------------------------------


def _run_main_without(blocked: str, argv: str = "['--help']") -> subprocess.CompletedProcess[str]:
    """Run the console script's ``main`` with ``blocked`` made unimportable (``None`` in
    ``sys.modules`` makes every import of it raise ``ModuleNotFoundError``)."""
    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None\n"
        "from implicit_transforms.__main__ import main\n"
        f"sys.exit(main({argv}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300
    )


@pytest.mark.parametrize(("blocked", "extra"), [("nflows", "nflows"), ("matplotlib", "plot")])
def test_console_script_names_the_missing_package(blocked: str, extra: str) -> None:
    pytest.importorskip("nflows")
    result = _run_main_without(blocked)
    assert result.returncode == 2, result.stderr
    assert f"needs '{blocked}'" in result.stderr
    assert f"implicit-transforms[{extra}]" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_script_reraises_other_import_errors() -> None:
    """A module that exists but lacks a name is a bug, not a missing install: the original
    ImportError comes out with its traceback, not install advice."""
    pytest.importorskip("nflows")
    code = (
        "import sys, types\n"
        "sys.modules['implicit_transforms.cli.main'] = types.ModuleType("
        "'implicit_transforms.cli.main')\n"
        "from implicit_transforms.__main__ import main\n"
        "sys.exit(main(['--help']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ImportError: cannot import name 'main'" in result.stderr
    assert "pip install" not in result.stderr
