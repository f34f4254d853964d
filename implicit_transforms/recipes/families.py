r"""Every default of the library, in one table: the block families and what each entry point
adds to them.

Each number or name here is read by every entry point that needs it (the factories, the
blocks' constructors, the nflows transforms, the Pyro helpers and recipes, ``image_flow``,
the command line); none of them restates a default. Where two entry points use different
values for the same setting, both are here, side by side, with the measurement behind each.

This module imports only the numerics (solvers, estimators): the blocks and the hosts import
it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from implicit_transforms.solvers import Anderson, Broyden, FixedPoint, OnFailure, SolverConfig

__all__ = [
    "ADJOINT_SOLVER",
    "EVAL_SERIES",
    "EXACT_LOGDET_MAX_DIM",
    "EXACT_LOGDET_TRAIN_MAX_DIM",
    "FACTORY_HIDDEN",
    "FAMILIES",
    "GUIDE_ACTIVATION",
    "GUIDE_INIT_SCALE",
    "GUIDE_MIXES",
    "IMAGE_ACTIVATION",
    "IMAGE_ZERO_INIT",
    "LAYER_COEFF",
    "NETWORK",
    "NETWORK_ACTIVATION",
    "TRAINER_ACTIVATION",
    "TRAINER_SCALE",
    "TRAINER_ZERO_INIT",
    "Family",
    "GuideMix",
    "helper_hidden",
    "recipe_hidden",
    "recipe_solver",
]


@dataclass(frozen=True)
class Family:
    """The paper configuration of a block family: the defaults
    :class:`~implicit_transforms.blocks.BlockOptions` fills.

    Attributes:
        name: ``"iresnet"``, ``"resflow"``, ``"impflow"`` or ``"monotone"``.
        coeff: Lipschitz coefficient of every layer.
        activation: name of the 1-Lipschitz activation.
        solver: builds the default solver from a failure policy.
        series: ``"power-series"`` (truncated, i-ResNet) or ``"roulette"`` (unbiased,
            Neumann gradient, Residual Flows and ImpFlow) training log-det.
        networks: residual networks per block (1 for the residual and monotone families, 2 for
            ImpFlow).
        n_terms: terms of the default truncated series (``series == "power-series"``).
        n_exact_terms: terms the default roulette estimator always evaluates.
        n_probes: Hutchinson probes per sample of the default estimators.

    Example:
        >>> FAMILIES["impflow"].solver("raise")
        Broyden(atol=None, rtol=None, max_iter=100, on_failure='raise', history=40, line_search='none', jacobian_guess=1.0, max_backtracks=8, max_growth=100.0, check_every=None)
    """

    name: str
    coeff: float
    activation: str
    solver: Callable[[OnFailure], SolverConfig]
    series: Literal["power-series", "roulette"]
    networks: int = 1
    n_terms: int = 5
    n_exact_terms: int = 2
    n_probes: int = 1


LAYER_COEFF = 0.97
"""The Lipschitz coefficient of a spectral layer or network built without one. It is Residual
Flows' and ImpFlow's ``c``; i-ResNet's table entry uses 0.9."""

NETWORK_ACTIVATION = "lipswish"
"""The activation of a Lipschitz network built without one. It is Residual Flows' LipSwish
(the families' table chooses its own, see :data:`FAMILIES`)."""

FAMILIES: dict[str, Family] = {
    "iresnet": Family("iresnet", 0.9, "elu", lambda p: FixedPoint(on_failure=p), "power-series"),
    "resflow": Family(
        "resflow", LAYER_COEFF, "sin", lambda p: FixedPoint(on_failure=p), "roulette"
    ),
    "impflow": Family(
        "impflow", LAYER_COEFF, "sin", lambda p: Broyden(on_failure=p), "roulette", networks=2
    ),
    # Monotone Flows (Ahn et al. 2022): one network, a solve in each direction (Broyden, as
    # ImpFlow's solves), the roulette estimator on both log-det terms.
    "monotone": Family("monotone", LAYER_COEFF, "sin", lambda p: Broyden(on_failure=p), "roulette"),
}
"""The block families and their defaults. They are the papers' configurations, except the
activation of ResFlow and ImpFlow, chosen by measurement. Residual Flows' LipSwish starts
almost linear on standardised data and stalls on the Gaussian fit; ``sin(2 pi x) / (2 pi)``
does not (800 Adam steps, ``[64, 64]`` networks, test bits, LipSwish vs sine: moons 3.54 vs
2.67 (ImpFlow-4) and 3.45 vs 2.68 (ResFlow-8), 8 Gaussians 2.90 vs 2.12 (ImpFlow-4); the
checkerboard after 1500 steps 6.46 vs 5.40 (ImpFlow-4); see ``benchmarks/README.md``). Pass
``activation="lipswish"`` for the paper's networks.

The ``"monotone"`` entry (Monotone Flows, Ahn et al. 2022) takes the same coefficient and
sine, measured on the moons (``--model monotone``, 4 blocks of ``[64, 64]``, 800 steps, exact
2-D log-det, float32): test 3.479 +- 0.014 bits with sine, 4.289 +- 0.011 with LipSwish.
Broyden, as ImpFlow: 4.1 forward / 4.1 inverse iterations per solve on average where Anderson
took 6.1 / 5.9, at the same test bits (3.479). The paper's own activation, CPila, is not in
this library's table yet."""

ADJOINT_SOLVER = Broyden(max_iter=200)
"""The solver of the implicit-gradient (adjoint) linear systems when none is given; blocks
give it their forward solver's failure policy
(:func:`~implicit_transforms.blocks.adjoint_for`)."""

EXACT_LOGDET_MAX_DIM = 64
"""Events of at most this many elements use the exact log-det in evaluation mode (and in the
Pyro recipes, in training too: their ELBO gradient has no estimator noise then)."""

EXACT_LOGDET_TRAIN_MAX_DIM = 3
"""Events with at most this many elements are also *trained* with the exact log-det by default
(:class:`~implicit_transforms.blocks.BlockOptions` gives the blocks of every entry point
``logdet_train=ExactLogDet()`` unless an estimator or one of its settings is given): up to
here a training step (forward and backward) with the exact log-det costs no more than with the
family's stochastic estimator, and has no noise. Measured by ``benchmarks/exact_threshold.py``
for ResFlow and ImpFlow blocks with the default networks of the factories / nflows transforms
and of the Pyro helpers, one CPU thread: exact / roulette 0.92 to 1.05 at ``D = 2`` and
``D = 3`` (parity within the runs' noise), 1.02 to 1.18 at ``D = 4``, 1.1 to 1.7 at ``D = 8``
and 3 to 4 at ``D = 16`` (``benchmarks/README.md``). Larger events are trained with the
family's estimator, whose value changes from call to call."""

EVAL_SERIES = (30, 8)
"""``(n_terms, n_probes)`` of the truncated series the command line evaluates events larger
than :data:`EXACT_LOGDET_MAX_DIM` with (unless trained with the exact log-det): a
high-precision estimate (bias below ``power_series_bound(c, 30, D)``)."""

FACTORY_HIDDEN = (64, 64)
"""Hidden sizes of the factories (:func:`~implicit_transforms.blocks.impflow_block`, ...) and
the nflows transforms when none are given."""


def helper_hidden(features: int) -> list[int]:
    """Hidden sizes of the bare Pyro helpers (``resflow``/``impflow``/``iresnet``): two
    layers of ``max(16, 8 D)`` (one block alone carries the whole guide).

    Args:
        features: the event size ``D``.

    Returns:
        The hidden sizes.

    Example:
        >>> helper_hidden(3)
        [24, 24]
    """
    return [max(16, 8 * features)] * 2


def recipe_hidden(features: int) -> list[int]:
    """Hidden sizes of the Pyro recipes' blocks (``flow_stack``, ``AutoFlowStack``): two
    layers of ``max(32, 4 D)``, the width ``benchmarks/vi.py`` measured best at equal cost.

    Args:
        features: the event size ``D``.

    Returns:
        The hidden sizes.

    Example:
        >>> recipe_hidden(100)
        [400, 400]
    """
    return [max(32, 4 * features)] * 2


def recipe_solver(on_failure: OnFailure) -> SolverConfig:
    """The Pyro recipes' ImpFlow solver: Anderson acceleration (same cost per training step
    as Broyden, 1.1x to 2.5x faster sampling in ``benchmarks/vi.py``).

    Args:
        on_failure: the solver's failure policy.

    Returns:
        An :class:`~implicit_transforms.solvers.Anderson` configuration.

    Example:
        >>> type(recipe_solver("raise")).__name__
        'Anderson'
    """
    return Anderson(on_failure=on_failure)


GUIDE_ACTIVATION = "lipswish"
"""The activation of the Pyro helpers and recipes, the variational guides, unless ``options``
or ``activation=`` names one. The library's default (sine) is chosen for density estimation on
standardised data; a guide starts near the identity and LipSwish suits it better
(``benchmarks/vi.py`` sweep: ResFlow x4 on a 10-D funnel, ELBO -1.009 with LipSwish, -1.614
with sine; on a 2-D banana ResFlow + ImpFlow with sine ends below ``AutoNormal``, -2.53 vs
-1.81, and above it with LipSwish, ``tests/test_plugin_pyro.py``)."""


@dataclass(frozen=True)
class GuideMix:
    r"""A mixed guide recipe: Pyro's affine autoregressive layers (IAF) alternating with the
    blocks of one family, then one elementwise affine layer.

    The guide transform is ``unit * repeats`` followed by the affine layer that starts at the
    model's initial values (``init_loc``, ``init_scale``); each ``"iaf"`` is
    ``z = mu(x) + sigma(x) * x`` with ``mu_i, sigma_i`` functions of ``x_{<i}`` (one layer
    represents a funnel ``x_i | v ~ N(0, e^v)`` exactly), each ``"block"`` a block of
    ``family`` (Jacobian singular values in ``[1 - c, 1 + c]``: it bends what the IAF layers
    cannot). Every network (IAF and block) has the recipes' hidden sizes
    (:func:`recipe_hidden`) unless given.

    Attributes:
        name: the name the Pyro recipes take in place of a family (``"iaf-impflow"``).
        family: the block family (a key of :data:`FAMILIES`).
        unit: the repeated layer pattern, ``"iaf"`` or ``"block"`` each.
        repeats: how many times ``unit`` is repeated (the recipes' ``blocks=`` overrides it).
        block_scale: factor on the last layer of every block network at the start; 0 makes
            every block the identity, so that the guide starts as its IAF layers alone.
        iaf_identity: whether the IAF layers start as the identity (their last layer zero),
            so that the whole guide starts as the diagonal Gaussian of its last affine layer.
        init_scale: the autoguide's starting scale (``AutoFlowStack``'s ``init_scale`` when
            none is given): the mixes start as wide as Pyro's IAF guide starts, 1, where the
            block recipes start at :data:`GUIDE_INIT_SCALE` (0.1, as ``AutoNormal``). Measured
            on ``iaf-resflow``, 500 ClippedAdam steps: ELBO -0.893 (scale 1) against -1.723
            (0.1) on the funnel at lr 1e-3, -0.655 against -1.243 at lr 1e-2; on the centred
            eight schools -32.30 against -35.83 at lr 1e-3, -32.28 against -83.71 at lr 1e-2.

    The IAF layers alternate the natural and the reversed variable order (the ``k``-th is
    reversed for odd ``k``), not Pyro's random orders: an order is a buffer, not a parameter,
    and a random one would not survive saving and reloading the parameter store.

    Example:
        >>> GUIDE_MIXES["iaf-resflow"].layers()
        ('iaf', 'block', 'iaf', 'block')
        >>> GUIDE_MIXES["iaf-impflow"].layers(2)
        ('iaf', 'block', 'iaf', 'iaf', 'block', 'iaf')
    """

    name: str
    family: str
    unit: tuple[str, ...]
    repeats: int
    block_scale: float = 0.0
    iaf_identity: bool = True
    init_scale: float = 1.0

    def layers(self, repeats: int | None = None) -> tuple[str, ...]:
        """The layer kinds in order, ``unit * repeats`` (the table's ``repeats`` if None)."""
        return self.unit * (self.repeats if repeats is None else repeats)


GUIDE_MIXES: dict[str, GuideMix] = {
    # Four networks each, as the Pyro recipes' ResFlow x4 / ImpFlow x2 and IAF x4 of
    # ``benchmarks/vi.py``: comparable parameter counts at the same hidden sizes. IAF first:
    # it takes the posterior's scales and funnel-shaped dependencies, the blocks then start
    # as the identity and bend the rest.
    "iaf-resflow": GuideMix("iaf-resflow", "resflow", ("iaf", "block"), 2),
    # one ImpFlow block (two networks) between two IAF layers
    "iaf-impflow": GuideMix("iaf-impflow", "impflow", ("iaf", "block", "iaf"), 1),
}
"""The mixed guide recipes (``flow_stack(D, "iaf-impflow")``, ``AutoFlowStack(model,
"iaf-resflow")``): IAF layers and residual or implicit blocks, with the reason for each. The
measurements are ``benchmarks/vi_sweep.py`` (``benchmarks/README.md``, "Guide sweep")."""

GUIDE_INIT_SCALE = 0.1
"""The starting scale of ``AutoFlowStack`` with a block family when none is given: that of
``AutoNormal`` (the mixes have their own, :attr:`GuideMix.init_scale`)."""

TRAINER_ACTIVATION = "sin"
"""The command line's activation for vector data, in every family, i-ResNet included. On
standardised 2-D data LipSwish and ELU networks start almost linear and sat on the Gaussian
fit (6.49 bits on the checkerboard) for 1500 steps, while sine networks left it at once."""

IMAGE_ACTIVATION = "lipswish"
"""The activation of image flows (``image_flow``, the command line on images): the Residual
Flows and ImpFlow image models' LipSwish."""

TRAINER_SCALE = "standardised"
"""The command line's ``--scale`` for vector data: what its flows' fixed first layer does to
the data ("standardised": subtract the training mean, divide by the training std; "raw": the
data as they are). Standardised, by measurement: the checkerboard ablation of the official
ImpFlow toy settings (no ActNorm) found raw points on [-4, 4]^2 0.08-0.11 bits better, but the
trainer's default model starts every layer with an ActNorm that scales its input to unit
variance at the first batch anyway, and on the README's first command (2,000 steps, seed 0)
``--scale raw`` gave 5.074 test bits against 5.072 standardised (``benchmarks/README.md``,
"The trainer's defaults"). Standardised data also keep files in other units (POWER, GAS, ...)
inside the splines' ``[-3, 3]``."""

TRAINER_ZERO_INIT: dict[str, bool] = {
    "iresnet": False,
    "resflow": False,
    "impflow": True,
    "monotone": False,
}
"""The command line's ``--zero-init`` for the Lipschitz networks of its vector models, per
family (``rq-impflow`` is an ``impflow`` model): whether each network's last layer starts near
zero, so every block starts near the identity. On for ImpFlow, by measurement: on the README's
first command (2,000 steps) 5.051 against 5.072 test bits at seed 0 and 5.061 against 5.089 at
seed 1, for no more CPU time (92 s against 106 s at seed 0, 119 s against 120 s at seed 1), and
0.021-0.049 bits in the checkerboard ablation of the official ImpFlow toy settings
(``benchmarks/README.md``). Off for i-ResNet, Residual Flows and Monotone Flows (not
measured)."""

IMAGE_ZERO_INIT = False
"""``--zero-init`` for image flows: off, the layers' own initialisation (not measured on
images)."""
NETWORK = "mlp"
"""The residual networks' architecture when none is named (``network=`` of
:class:`~implicit_transforms.blocks.BlockOptions`): the papers' chains of spectral layers
(:class:`~implicit_transforms.lipschitz.LipschitzMLP`, or
:class:`~implicit_transforms.lipschitz.LipschitzCNN` for images). ``"densenet"`` builds
i-DenseNets' (:class:`~implicit_transforms.lipschitz.LipschitzDenseMLP`,
:class:`~implicit_transforms.lipschitz.LipschitzDenseCNN`) in every family."""
