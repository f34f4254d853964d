"""The documentation's sources stay complete and buildable offline.

The build itself (``bash scripts/docs.sh``: Sphinx with warnings as errors and every
cross-reference resolved) runs in CI after the test suite; these checks are the cheap ones
that need no Sphinx: every public package has a page, every stable name is on the root page,
nothing fetches from the internet, and the public functions and classes of the modules whose
docstrings were written for the reference keep the house style (``Args:``, ``Returns:``).
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Public package -> its page under docs/api/.
PAGES = {
    "implicit_transforms": "implicit_transforms",
    "implicit_transforms.blocks": "blocks",
    "implicit_transforms.solvers": "solvers",
    "implicit_transforms.logdet": "logdet",
    "implicit_transforms.lipschitz": "lipschitz",
    "implicit_transforms.images": "images",
    "implicit_transforms.data": "data",
    "implicit_transforms.plugins.nflows": "plugins_nflows",
    "implicit_transforms.plugins.pyro": "plugins_pyro",
}

# Modules whose every public function and class documents its arguments and result.
STYLED_MODULES = [
    "implicit_transforms.solvers",
    "implicit_transforms.logdet",
    "implicit_transforms.images",
    "implicit_transforms.implicit",
    "implicit_transforms.errors",
    "implicit_transforms.validation",
    "implicit_transforms.recipes.families",
    "implicit_transforms.recipes.registry",
    "implicit_transforms.recipes.spec",
    "implicit_transforms.lipschitz.norms",
    "implicit_transforms.lipschitz.activations",
    "implicit_transforms.lipschitz.networks",
    "implicit_transforms.lipschitz.densenet",
    "implicit_transforms.lipschitz.certify",
]


def _toctree_entries(page: Path) -> set[str]:
    """The entries of the toctrees of a reST page (indented block) or a MyST page (fence)."""
    entries = set()
    kind = None
    for line in page.read_text().splitlines():
        item = line.strip()
        if kind is None:
            kind = {".. toctree::": "rst", "```{toctree}": "myst"}.get(item)
        elif (kind == "myst" and item.startswith("```")) or (
            kind == "rst" and item and not line[0].isspace()
        ):
            kind = None
        elif item and not item.startswith(":"):
            entries.add(item)
    return entries


@pytest.mark.parametrize("package", sorted(PAGES))
def test_every_public_package_has_a_page(package: str) -> None:
    page = DOCS / "api" / f"{PAGES[package]}.rst"
    assert page.is_file(), f"no page for {package}: add {page.relative_to(ROOT)}"
    assert f".. automodule:: {package}\n" in page.read_text(), (
        f"{page.name} does not document {package}"
    )
    assert PAGES[package] in _toctree_entries(DOCS / "api" / "index.rst"), (
        f"{page.name} is not in the toctree of docs/api/index.rst"
    )


def test_index_links_every_section() -> None:
    assert _toctree_entries(DOCS / "index.md") >= {"installation", "tutorials", "api/index", "cli"}


def test_root_page_lists_every_stable_name() -> None:
    import implicit_transforms

    text = (DOCS / "api" / "implicit_transforms.rst").read_text()
    summary = text.split(".. autosummary::", 1)[1].split("\n\n", 2)[1]
    listed = {line.strip() for line in summary.splitlines() if line.strip()}
    missing = set(implicit_transforms.__all__) - listed
    assert not missing, (
        f"add {sorted(missing)} to the autosummary of docs/api/implicit_transforms.rst"
    )


def test_tutorials_are_rendered_from_their_outputs() -> None:
    conf = (DOCS / "conf.py").read_text()
    assert re.search(r'^nb_execution_mode = "off"$', conf, re.M), "tutorials must not be executed"
    assert "tutorials/*" in _toctree_entries(DOCS / "tutorials.md")
    assert sorted(p.name for p in (ROOT / "tutorials").glob("*.ipynb")), "no tutorial found"


def test_the_build_is_offline_and_strict() -> None:
    conf = (DOCS / "conf.py").read_text()
    assert "sphinx.ext.intersphinx" not in conf, "intersphinx fetches inventories from the internet"
    assert "sphinx-mathjax-offline" in conf, "MathJax must be served from the build folder"
    script = (ROOT / "scripts" / "docs.sh").read_text()
    assert re.search(r"sphinx .*-W --keep-going -n", script), "warnings must fail the build"
    assert "scripts/setup-env.sh docs" in script, "docs.sh must install what it needs"
    assert "bash scripts/docs.sh" in (ROOT / ".ci" / "run").read_text()


def _public_objects() -> list[tuple[str, object]]:
    found: dict[int, tuple[str, object]] = {}
    for name in STYLED_MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found.setdefault(id(obj), (f"{name}.{attr}", obj))
    return sorted(found.values(), key=lambda item: item[0])


@pytest.mark.parametrize(
    ("name", "obj"), _public_objects(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_docstrings_follow_the_house_style(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    if not inspect.isfunction(obj):
        return
    signature = inspect.signature(obj)
    if signature.parameters:
        assert "Args:" in doc, f"{name}: document the arguments in an Args: section"
    returns = signature.return_annotation
    if returns not in (None, "None", inspect.Signature.empty) and not str(returns).startswith(
        "Iterator"
    ):
        assert "Returns:" in doc, f"{name}: document the result in a Returns: section"


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in sorted(DOCS.glob("*.md")):
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
            blocks.append((f"{page.name}-{i}", code))
    return blocks


@pytest.mark.parametrize(
    ("name", "code"), _python_blocks(), ids=lambda v: v if "\n" not in v else ""
)
def test_python_examples_on_the_pages_run(name: str, code: str) -> None:
    exec(compile(code, name, "exec"), {})
