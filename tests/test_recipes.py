"""The assembly layer: each default lives in one place and every entry point reads it there;
block specs round-trip through JSON; the command line stores and checks its spec."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from implicit_transforms import recipes
from implicit_transforms.blocks import BlockOptions, build_block
from implicit_transforms.logdet import ExactLogDet, RouletteLogDet
from implicit_transforms.recipes import FAMILIES, BlockSpec
from implicit_transforms.solvers import Anderson, Broyden, FixedPoint


def _coeffs(module: torch.nn.Module) -> set[float]:
    return {m.coeff for m in module.modules() if hasattr(m, "coeff") and hasattr(m, "weight")}


def _entry_points(family: str) -> dict[str, torch.nn.Module]:
    pytest.importorskip("nflows")
    pytest.importorskip("pyro")
    from implicit_transforms.plugins import nflows as nf
    from implicit_transforms.plugins import pyro as pp

    transform = {
        "resflow": nf.ResFlowTransform,
        "impflow": nf.ImpFlowTransform,
        "monotone": nf.MonotoneTransform,
    }[family]
    helper = {"resflow": pp.resflow, "impflow": pp.impflow, "monotone": pp.monotone}[family]
    return {
        "factory": build_block(family, 4, [8]),
        "nflows": transform(4, [8]),
        "pyro": helper(4, [8]),
        "pyro-stack": pp.flow_stack(4, family, blocks=1),
    }


@pytest.mark.parametrize("family", ["resflow", "impflow", "monotone"])
def test_a_family_default_changed_in_the_table_reaches_every_entry_point(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Change one number in the table: the factories, nflows, the Pyro helpers and recipes
    all build with it (none of them restates it)."""
    changed = dataclasses.replace(FAMILIES[family], coeff=0.61)
    monkeypatch.setitem(FAMILIES, family, changed)
    for name, module in _entry_points(family).items():
        assert _coeffs(module) == {0.61}, name


def test_the_adjoint_solver_default_is_the_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    block = build_block("impflow", 3, [8])
    assert block.adjoint_solver == recipes.ADJOINT_SOLVER.replace(on_failure="raise")
    assert type(build_block("resflow", 3, [8]).solver) is type(FAMILIES["resflow"].solver("raise"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("shape", [2, 8, (2, 4, 4)])
def test_block_spec_round_trips_and_builds(family: str, shape: int | tuple[int, ...]) -> None:
    spec = BlockSpec.from_options(family, shape, [8], coeff=0.9)
    data = json.loads(json.dumps(spec.to_dict()))  # JSON-ready
    again = BlockSpec.from_dict(data)
    assert again == spec
    block = again.build()
    assert len(block.networks()) == FAMILIES[family].networks
    assert _coeffs(block) == {0.9}
    x = torch.randn(3, *((shape,) if isinstance(shape, int) else shape))
    y, _ = block.eval().forward_and_logdet(x)
    assert y.shape == x.shape


def test_spec_components_are_the_given_objects() -> None:
    spec = BlockSpec.from_options(
        "resflow", 5, [8], solver=Anderson(max_iter=7), logdet_train=ExactLogDet()
    )
    assert spec.solver == Anderson(max_iter=7)
    assert isinstance(spec.logdet_train, ExactLogDet)
    assert spec.to_dict()["solver"] == {
        **dataclasses.asdict(Anderson(max_iter=7)),
        "name": "anderson",
    }
    default = BlockSpec.from_options("resflow", 5, [8])
    assert isinstance(default.logdet_train, RouletteLogDet)  # above the exact-training limit
    assert isinstance(BlockSpec.from_options("resflow", 2, [8]).logdet_train, ExactLogDet)


def test_unnamed_components_cannot_be_written() -> None:
    class Mine(FixedPoint):
        pass

    spec = BlockSpec.from_options("resflow", 3, [8], options=BlockOptions(solver=Mine()))
    with pytest.raises(ValueError, match="no registry name"):
        spec.to_dict()


def test_registry_names_build_components() -> None:
    assert isinstance(recipes.make_solver("broyden", max_iter=None), Broyden)
    assert recipes.make_logdet("roulette", n_exact_terms=3).length.n_exact_terms == 3
    with pytest.raises(ValueError, match="solver must be one of"):
        recipes.make_solver("newton")
    with pytest.raises(ValueError, match="logdet must be one of"):
        recipes.make_logdet("hutch")
    assert recipes.MODEL_PRESETS["iresnet"]["coeff"] == FAMILIES["iresnet"].coeff


def test_cli_config_stores_the_block_spec_and_checks_it(tmp_path: Path) -> None:
    pytest.importorskip("nflows")
    from implicit_transforms.cli.main import main

    run = tmp_path / "run"
    args = ["train", "--model", "resflow", "--n-samples", "200", "--blocks", "1", "--hidden", "8"]
    args += ["--steps", "2", "--eval-every", "1", "--batch-size", "32", "--warmup", "1"]
    args += ["--figure-grid", "10", "--figure-samples", "50", "--no-progress"]
    assert main([*args, "--run-dir", str(run)]) == 0
    stored = json.loads((run / "config.json").read_text())
    spec = BlockSpec.from_dict(stored["block_spec"])
    assert spec.family == "resflow" and spec.hidden == (8,)
    assert spec.coeff == FAMILIES["resflow"].coeff
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    # A stored spec that the settings no longer build: refused with one clear line.
    stored["block_spec"]["coeff"] = 0.5
    (run / "config.json").write_text(json.dumps(stored))
    assert main(["evaluate", str(run), "--no-progress"]) == 2


# -- zero_init: a setting of every entry point, part of the spec -------------------------------


def _last_weights(block: torch.nn.Module) -> list[torch.Tensor]:
    return [net.layers[-1].weight.detach() for net in block.networks()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_zero_init_reaches_the_networks_and_round_trips(family: str) -> None:
    torch.manual_seed(3)
    plain = build_block(family, 2, [16])
    torch.manual_seed(3)
    spec = BlockSpec.from_options(family, 2, [16], options=BlockOptions(zero_init=True))
    assert spec.zero_init and spec.to_dict()["zero_init"] is True
    again = BlockSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.zero_init
    block = spec.build()
    for near, far in zip(_last_weights(block), _last_weights(plain), strict=True):
        assert torch.equal(near, far / 1000)
    # each block starts as a translation: unit Jacobian, log-det ~ 0, in both directions
    x = torch.randn(64, 2)
    y, logdet = block.eval().forward_and_logdet(x)
    shift = (y - x).detach()
    assert float((shift - shift.mean(0)).abs().max()) < 1e-2
    assert float(logdet.detach().abs().max()) < 1e-2
    assert torch.allclose(block.inverse_map(y.detach()), x, atol=1e-8)


def test_a_spec_written_before_zero_init_reads_as_off() -> None:
    spec = BlockSpec.from_options("impflow", 2, [8])
    data = spec.to_dict()
    del data["zero_init"]
    old = BlockSpec.from_dict(data)
    assert old.zero_init is False and old == spec


def test_zero_init_option_is_checked_and_reaches_every_keyword_entry_point() -> None:
    with pytest.raises(TypeError, match="zero_init must be a bool, got int"):
        BlockOptions(zero_init=1)  # type: ignore[arg-type]
    torch.manual_seed(0)
    block = build_block("resflow", 3, [8], zero_init=True)
    assert float(_last_weights(block)[0].abs().max()) < 1e-3
    pytest.importorskip("nflows")
    from implicit_transforms.plugins.nflows import ImpFlowTransform

    layer = ImpFlowTransform(3, [8], zero_init=True)
    assert all(float(w.abs().max()) < 1e-3 for w in _last_weights(layer.block))
