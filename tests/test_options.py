"""One options object: the same settings build the same block in the core, nflows, Pyro, normflows
and zuko."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

pytest.importorskip("nflows")
pytest.importorskip("pyro")

from implicit_transforms.plugins import nflows as it_nflows
from implicit_transforms.plugins import pyro as it_pyro

try:  # the normflows and zuko adapters join the registry when their hosts are installed
    from implicit_transforms.plugins import normflows as it_normflows
    from implicit_transforms.plugins import zuko as it_zuko
except ImportError:  # pragma: no cover - without the extras
    it_normflows = it_zuko = None

from implicit_transforms import BlockOptions, InvertibleBlock
from implicit_transforms.blocks import (
    build_block,
    impflow_block,
    iresnet_block,
    monotone_block,
    resflow_block,
)
from implicit_transforms.lipschitz import (
    CLipSwish,
    LipschitzDenseMLP,
    LipschitzMLP,
    LipSwish,
    Sine,
    SpectralLinear,
)
from implicit_transforms.logdet import ExactLogDet, PowerSeriesLogDet, RouletteLogDet
from implicit_transforms.solvers import Anderson, Broyden, FixedPoint

FACTORIES = {
    "iresnet": iresnet_block,
    "resflow": resflow_block,
    "impflow": impflow_block,
    "monotone": monotone_block,
}
NFLOWS = {
    "iresnet": it_nflows.IResNetTransform,
    "resflow": it_nflows.ResFlowTransform,
    "impflow": it_nflows.ImpFlowTransform,
    "monotone": it_nflows.MonotoneTransform,
}
NAMES = {"iresnet": "IResNet", "resflow": "ResFlow", "impflow": "ImpFlow", "monotone": "Monotone"}
PYRO = {
    "iresnet": it_pyro.iresnet,
    "resflow": it_pyro.resflow,
    "impflow": it_pyro.impflow,
    "monotone": it_pyro.monotone,
}
PYRO_CONDITIONAL = {
    "iresnet": it_pyro.conditional_iresnet,
    "resflow": it_pyro.conditional_resflow,
    "impflow": it_pyro.conditional_impflow,
    "monotone": it_pyro.conditional_monotone,
}


def _entry_points(family: str) -> dict[str, Callable[..., InvertibleBlock]]:
    points: dict[str, Callable[..., InvertibleBlock]] = {
        "factory": lambda **kw: FACTORIES[family](3, [8], **kw),
        "build_block": lambda **kw: build_block(family, 3, [8], **kw),
        "nflows": lambda **kw: NFLOWS[family](3, [8], **kw).block,
        "pyro": lambda **kw: PYRO[family](3, [8], **kw).block,
        "pyro-conditional": lambda **kw: PYRO_CONDITIONAL[family](3, 2, [8], **kw).block,
    }
    if it_normflows is not None and it_zuko is not None:
        name = NAMES[family]
        normflows, zuko = getattr(it_normflows, name), getattr(it_zuko, name)
        conditional = getattr(it_normflows, "Conditional" + name)
        points["normflows"] = lambda **kw: normflows(3, [8], **kw).block
        points["normflows-conditional"] = lambda **kw: conditional(3, 2, [8], **kw).block
        points["zuko"] = lambda **kw: zuko(3, 0, [8], **kw).block
        points["zuko-conditional"] = lambda **kw: zuko(3, 2, [8], **kw).block
    return points


def _summary(block: InvertibleBlock) -> dict[str, Any]:
    layers = [m for m in block.modules() if isinstance(m, SpectralLinear)]
    acts = {type(m).__name__ for net in block.networks() for m in net.activations}
    return {
        "coeff": {m.coeff for m in layers},
        "activation": acts,
        "solver": getattr(block, "solver", None),
        "adjoint": getattr(block, "adjoint_solver", None),
        "logdet_train": repr(block.logdet_train),
        "logdet_eval": repr(block.logdet_eval),
        # zero_init: every network's last weight near zero (/1000 of a ~0.3 init)
        "near_zero": {bool(net.layers[-1].weight.abs().max() < 2e-3) for net in block.networks()},
    }


@pytest.mark.parametrize("family", FACTORIES)
def test_every_entry_point_takes_the_same_settings(family: str) -> None:
    solver = Anderson(history=3, regularization=1e-4, on_failure="warn")
    adjoint = Broyden(max_iter=30, on_failure="ignore")
    settings: dict[str, Any] = {
        "coeff": 0.8,
        "activation": "sin",
        "solver": solver,
        "adjoint_solver": adjoint,
        "logdet_train": PowerSeriesLogDet(3, 2),
        "logdet_eval": ExactLogDet(),
        "zero_init": True,
    }
    summaries = []
    for name, make in _entry_points(family).items():
        by_keywords = _summary(make(**settings))
        by_object = _summary(make(options=BlockOptions(**settings)))
        assert by_keywords == by_object, name
        summaries.append(by_keywords)
    assert all(s == summaries[0] for s in summaries)
    first = summaries[0]
    assert first["coeff"] == {0.8} and first["activation"] == {"Sine"}
    assert first["near_zero"] == {True}
    assert _summary(_entry_points(family)["factory"]())["near_zero"] == {False}
    assert first["solver"] is solver and first["adjoint"] is adjoint


@pytest.mark.parametrize("family", FACTORIES)
def test_on_failure_reaches_the_forward_and_the_adjoint_solver(family: str) -> None:
    for name, make in _entry_points(family).items():
        block = make(on_failure="warn")
        assert block.solver.on_failure == "warn", name
        assert block.adjoint_solver.on_failure == "warn", name


def test_family_defaults() -> None:
    defaults = {name: _summary(f(3, [8])) for name, f in FACTORIES.items()}
    assert defaults["iresnet"]["coeff"] == {0.9} and defaults["iresnet"]["activation"] == {"ELU"}
    # the family estimators above the exact-training threshold (tests/test_exact_training_logdet)
    assert isinstance(iresnet_block(8).logdet_train, PowerSeriesLogDet)
    assert isinstance(resflow_block(8).logdet_train, RouletteLogDet)
    assert isinstance(impflow_block(8).logdet_train, RouletteLogDet)
    assert isinstance(resflow_block(3).solver, FixedPoint)
    assert isinstance(impflow_block(3).solver, Broyden)
    assert {type(a) for a in resflow_block(3).net.activations} == {Sine}  # by measurement
    assert {type(a) for a in resflow_block(3, activation="lipswish").net.activations} == {LipSwish}
    assert isinstance(impflow_block(3, activation="sin").net_x.activations[0], Sine)
    est = resflow_block(3, n_exact_terms=4, n_probes=3).logdet_train
    assert isinstance(est, RouletteLogDet) and est.length.n_exact_terms == 4  # type: ignore[attr-defined]
    assert est.n_probes == 3
    assert iresnet_block(3, n_terms=7).logdet_train.n_terms == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", FACTORIES)
def test_network_and_concatenated_activation_reach_every_entry_point(family: str) -> None:
    """``network="densenet"`` with CLipSwish through every host, without host code of its
    own: the same networks as the factory's (same layer widths, same activation)."""
    opts = {"network": "densenet", "activation": "clipswish"}
    for name, make in _entry_points(family).items():
        for block in (make(**opts), make(options=BlockOptions(**opts))):
            nets = block.networks()
            assert all(isinstance(n, LipschitzDenseMLP) for n in nets), name
            assert {type(a) for n in nets for a in n.activations} == {CLipSwish}, name
            widths = [m.in_features for m in nets[0].layers]
            assert widths == [3, 3 + 2 * 8], name  # the activation doubles the growth
        assert all(isinstance(n, LipschitzMLP) for n in make().networks()), name


@pytest.mark.parametrize("family", FACTORIES)
def test_unknown_settings_are_refused_everywhere(family: str) -> None:
    for name, make in _entry_points(family).items():
        with pytest.raises(TypeError, match=r"unknown block option\(s\) 'cofe'.*valid options"):
            make(cofe=0.5)
        assert name


@pytest.mark.parametrize(
    ("family", "settings", "match"),
    [
        ("resflow", {"solver": FixedPoint(), "on_failure": "warn"}, "set the policy on the solver"),
        (
            "resflow",
            {"adjoint_solver": Broyden(), "on_failure": "ignore"},
            "set the policy on the adjoint_solver",
        ),
        ("resflow", {"logdet_train": ExactLogDet(), "n_probes": 2}, "configure ExactLogDet"),
        ("iresnet", {"n_exact_terms": 3}, "takes n_terms"),
        ("impflow", {"n_terms": 3}, "takes n_exact_terms"),
        ("resflow", {"coeff": 1.0}, "coeff must be in"),
        ("resflow", {"activation": "relu"}, "activation must be one of"),
        ("resflow", {"on_failure": "explode"}, "on_failure"),
        ("resflow", {"n_probes": 0}, "n_probes"),
    ],
)
def test_conflicting_or_bad_settings_are_errors(
    family: str, settings: dict[str, Any], match: str
) -> None:
    for make in _entry_points(family).values():
        with pytest.raises(ValueError, match=match):
            make(**settings)


def test_options_compose() -> None:
    base = BlockOptions(coeff=0.8, on_failure="warn")
    changed = base.replace(activation="sin")
    assert changed.coeff == 0.8 and changed.activation == "sin" and base.activation is None
    block = resflow_block(3, [8], options=base, coeff=0.7)
    assert {m.coeff for m in block.modules() if isinstance(m, SpectralLinear)} == {0.7}
    with pytest.raises(TypeError, match="options must be a BlockOptions"):
        resflow_block(3, options={"coeff": 0.5})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator"):
        BlockOptions(generator=0)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    assert resflow_block(3, generator=gen).logdet_train.generator is gen  # type: ignore[attr-defined]


@pytest.mark.parametrize("family", FACTORIES)
def test_pyro_helpers_default_to_lipswish_for_guides(family: str) -> None:
    """Guides start near the identity: the Pyro helpers use LipSwish unless told otherwise
    (measured in benchmarks/vi.py); i-ResNet keeps ELU; an explicit choice always wins."""
    expected = {"ELU"} if family == "iresnet" else {"LipSwish"}
    for name in ("pyro", "pyro-conditional"):
        make = _entry_points(family)[name]
        assert _summary(make())["activation"] == expected, name
        assert _summary(make(activation="sin"))["activation"] == {"Sine"}, name
        assert _summary(make(options=BlockOptions(activation="sin")))["activation"] == {"Sine"}
    assert _summary(_entry_points(family)["nflows"]())["activation"] != {"LipSwish"}


# -- common mistakes get one clear error in every entry point ---------------------------------


def _sized_entry_points(family: str) -> dict[str, tuple[Callable[..., InvertibleBlock], str, str]]:
    """``name -> (make(shape, hidden), name of the shape argument, name of the hidden one)``."""
    from implicit_transforms.plugins.pyro_guides import flow_stack

    return {
        "factory": (lambda s, h: FACTORIES[family](s, h), "event_shape", "hidden"),
        "build_block": (lambda s, h: build_block(family, s, h), "event_shape", "hidden"),
        "nflows": (lambda s, h: NFLOWS[family](s, h).block, "features", "hidden_features"),
        "pyro": (lambda s, h: PYRO[family](s, h).block, "input_dim", "hidden_dims"),
        "pyro-conditional": (
            lambda s, h: PYRO_CONDITIONAL[family](s, 2, h).block,
            "input_dim",
            "hidden_dims",
        ),
        "flow_stack": (
            lambda s, h: flow_stack(s, family, blocks=1, hidden_dims=h).parts[0].block,
            "input_dim",
            "hidden_dims",
        ),
    }


def _layer_sizes(block: InvertibleBlock) -> list[tuple[int, int]]:
    return [
        (m.in_features, m.out_features) for m in block.modules() if isinstance(m, SpectralLinear)
    ]


@pytest.mark.parametrize("family", FACTORIES)
def test_an_int_hidden_size_is_one_hidden_layer_everywhere(family: str) -> None:
    for name, (make, _, _) in _sized_entry_points(family).items():
        sizes = _layer_sizes(make(3, 16))
        assert sizes == _layer_sizes(make(3, [16])), name
        assert sizes[:2] == [(3, 16), (16, 3)], name


@pytest.mark.parametrize("family", FACTORIES)
def test_bad_sizes_name_the_argument_everywhere(family: str) -> None:
    for name, (make, shape_arg, hidden_arg) in _sized_entry_points(family).items():
        with pytest.raises(TypeError, match=rf"{shape_arg} must be .*got 2\.0 \(float\)"):
            make(2.0, [8])
        with pytest.raises(TypeError, match=rf"{hidden_arg} must be a positive int or a sequence"):
            make(3, "16")
        with pytest.raises(TypeError, match=rf"{hidden_arg} must be .*got an entry 8\.0"):
            make(3, [8.0])
        with pytest.raises(ValueError, match=rf"{hidden_arg} must be .*got an entry 0"):
            make(3, [8, 0])
        if not name.startswith(("pyro", "flow_stack")):  # Pyro's convention: None = default
            with pytest.raises(TypeError, match=rf"{hidden_arg} must be .*got None"):
                make(3, None)
    with pytest.raises(ValueError, match=r"features must be .*\(C, H, W\).*got \(2, 4\)"):
        NFLOWS[family]((2, 4), 8)


@pytest.mark.parametrize("family", FACTORIES)
@pytest.mark.parametrize(
    ("field", "cls"),
    [
        ("solver", Broyden),
        ("adjoint_solver", FixedPoint),
        ("logdet_train", ExactLogDet),
        ("logdet_eval", ExactLogDet),
    ],
)
def test_a_class_where_an_instance_is_expected_is_refused(
    family: str, field: str, cls: type
) -> None:
    message = rf"{field}: pass {cls.__name__}\(\) \(an instance\), got the class {cls.__name__}"
    with pytest.raises(TypeError, match=message):
        BlockOptions(**{field: cls})
    for make in _entry_points(family).values():
        with pytest.raises(TypeError, match=message):
            make(**{field: cls})


@pytest.mark.parametrize("family", FACTORIES)
def test_coeff_takes_numpy_and_zero_d_tensor_scalars(family: str) -> None:
    np = pytest.importorskip("numpy")
    for value in (np.float32(0.9), np.float64(0.8), torch.tensor(0.7), np.int64(0) + 0.5):
        expected = float(value)
        for name, make in _entry_points(family).items():
            assert _summary(make(coeff=value))["coeff"] == {expected}, name
        assert type(BlockOptions(coeff=value).coeff) is float
    for bad in (True, np.bool_(True), torch.tensor([0.5, 0.5]), "0.9", 0.5j):
        with pytest.raises(TypeError, match="coeff must be a float in"):
            BlockOptions(coeff=bad)
    for outside in (np.float32(1.0), torch.tensor(0.0), -0.5):
        with pytest.raises(ValueError, match=r"coeff must be in \(0, 1\)"):
            BlockOptions(coeff=outside)
