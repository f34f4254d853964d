"""Resolve Python cross-references through the objects they name.

Each object is documented once, on the page of the public package that exports it (for
example ``implicit_transforms.solvers.SolverResult``), while docstrings also name it through
the root re-export (``implicit_transforms.SolverResult``) or its defining module
(``implicit_transforms.solvers.result.SolverResult``). When Sphinx finds no target under the
written name, this imports that name and links to where the same object is documented; a
module that has no page of its own links to the page of its nearest documented package.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

# Rebuilt once per build (at the first missing reference, when every page has been read); the
# objects are kept so that their ids stay valid.
_STATE: dict[str, Any] = {}


def _resolve(name: str) -> Any:
    """The object named by a dotted path, or None.

    Each step is an attribute before it is a submodule, as in Python's own ``from a import b``:
    ``implicit_transforms.lipschitz.certify`` is the function the package exports, not the
    module of the same name.
    """
    parts = name.split(".")
    try:
        obj: Any = importlib.import_module(parts[0])
    except Exception:  # not importable: not ours to diagnose here
        return None
    for i, attr in enumerate(parts[1:], start=2):
        try:
            obj = inspect.getattr_static(obj, attr)
            continue
        except AttributeError:
            pass
        if not inspect.ismodule(obj):
            return None
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:
            # A name a package exports lazily (PEP 562 ``__getattr__``), not a submodule.
            try:
                obj = getattr(obj, attr)
            except Exception:
                return None
    return obj


def _identifiable(obj: Any) -> bool:
    """Whether ``obj`` is named by its identity: a module, class or function, or a non-empty
    container constant (numbers and strings may be shared between unrelated names)."""
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
        return True
    return isinstance(obj, (tuple, list, dict, set, frozenset)) and len(obj) > 0


def _index(env: BuildEnvironment) -> dict[int, str]:
    """id(object) -> documented name, for the documented modules, classes and functions."""
    if "index" in _STATE:
        return _STATE["index"]
    index: dict[int, str] = {}
    keep = []
    for name, entry in env.get_domain("py").objects.items():
        if entry.objtype not in {"module", "class", "exception", "function", "data"}:
            continue
        obj = _resolve(name)
        if _identifiable(obj):
            keep.append(obj)
            index.setdefault(id(obj), name)
    _STATE.update(index=index, keep=keep)
    return index


def _documented_name(env: BuildEnvironment, target: str) -> str | None:
    objects = env.get_domain("py").objects
    index = _index(env)
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        obj = _resolve(".".join(parts[:i]))
        if not _identifiable(obj):
            continue
        if inspect.ismodule(obj) and i == len(parts):
            # A module without a page: its nearest documented package.
            for j in range(i, 0, -1):
                package = ".".join(parts[:j])
                if package in objects and objects[package].objtype == "module":
                    return package
            return None
        base = index.get(id(obj))
        if base is None:
            return None
        candidate = ".".join([base, *parts[i:]])
        return candidate if candidate in objects else None
    return None


def _missing_reference(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.Element
) -> nodes.Element | None:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    candidates = [target]
    for context in (node.get("py:class"), node.get("py:module")):
        if context:
            candidates.append(f"{context}.{target}")
    for candidate in candidates:
        name = _documented_name(env, candidate)
        if name is None or name == target:
            continue
        reftype = "mod" if env.get_domain("py").objects[name].objtype == "module" else "obj"
        return env.get_domain("py").resolve_xref(
            env, node["refdoc"], app.builder, reftype, name, node, contnode
        )
    return None


def _reset(app: Sphinx) -> None:
    _STATE.clear()


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", _reset)
    app.connect("missing-reference", _missing_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
