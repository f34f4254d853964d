"""The built wheel ships the core and the plugins under implicit_transforms.plugins."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_wheel_contains_plugins(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("implicit_transforms-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "implicit_transforms/__init__.py",
        "implicit_transforms/solvers/broyden.py",
        "implicit_transforms/plugins/__init__.py",
        "implicit_transforms/plugins/nflows/__init__.py",
        "implicit_transforms/plugins/nflows/transforms.py",
        "implicit_transforms/plugins/nflows/images.py",
        "implicit_transforms/plugins/nflows_images.py",
        "implicit_transforms/plugins/pyro/__init__.py",
        "implicit_transforms/plugins/pyro/transforms.py",
        "implicit_transforms/plugins/pyro/helpers.py",
        "implicit_transforms/plugins/pyro/distribution.py",
        "implicit_transforms/plugins/pyro/guides.py",
        "implicit_transforms/plugins/pyro_guides.py",
        "implicit_transforms/images/data.py",
        "implicit_transforms/cli/distributed.py",
        "implicit_transforms/cli/load.py",
        "implicit_transforms/plugins/nflows_flows.py",
        "implicit_transforms/plugins/default_flow.py",
        "implicit_transforms/plugins/normflows/__init__.py",
        "implicit_transforms/plugins/normflows/layers.py",
        "implicit_transforms/plugins/zuko/__init__.py",
        "implicit_transforms/plugins/zuko/transforms.py",
    ):
        assert required in names, required
    assert not any(n.startswith("plugins/") or n.startswith("tests/") for n in names)


def test_plugins_import_under_package_name() -> None:
    import implicit_transforms.plugins.nflows as nf
    import implicit_transforms.plugins.pyro as pp

    assert nf.ImpFlowTransform.__module__ == "implicit_transforms.plugins.nflows.transforms"
    assert pp.ImpFlow.__module__ == "implicit_transforms.plugins.pyro.helpers"
    assert pp.flow_stack.__module__ == "implicit_transforms.plugins.pyro.guides"
