"""The blocks in Pyro: ``implicit_transforms.plugins.pyro``.

* :mod:`~implicit_transforms.plugins.pyro.transforms`: the adapter, any block (or its
  ``.inv``) as a Pyro ``TransformModule``, and its conditional version;
* :mod:`~implicit_transforms.plugins.pyro.helpers`: one transform per family built from sizes
  (``resflow(D)``, ``impflow(D)``, ``monotone(D)``, ...);
* :mod:`~implicit_transforms.plugins.pyro.distribution`: :class:`FlowDistribution`, which
  samples and scores in one pass;
* :mod:`~implicit_transforms.plugins.pyro.guides`: guide recipes (``flow_stack``, the
  autoguide ``AutoFlowStack``, elementwise affine layers).

Needs the ``pyro`` extra: ``pip install 'implicit-transforms[pyro]'``.
"""

from implicit_transforms.plugins.pyro.distribution import FlowDistribution
from implicit_transforms.plugins.pyro.guides import (
    RECIPE_ACTIVATION,
    RECIPE_NAMES,
    AutoFlowStack,
    ConditionalElementwiseAffine,
    ElementwiseAffine,
    conditional_flow_stack,
    flow_stack,
    recipe_options,
)
from implicit_transforms.plugins.pyro.helpers import (
    GUIDE_ACTIVATION,
    ConditionalHelperFactory,
    ConditionalImpFlow,
    ConditionalIResNet,
    ConditionalMonotone,
    ConditionalResFlow,
    HelperFactory,
    ImpFlow,
    IResNet,
    Monotone,
    ResFlow,
    conditional_impflow,
    conditional_iresnet,
    conditional_monotone,
    conditional_resflow,
    impflow,
    iresnet,
    monotone,
    resflow,
)
from implicit_transforms.plugins.pyro.transforms import (
    BlockTransformModule,
    ConditionalBlockTransformModule,
    ConditionalInverseBlockTransformModule,
    InverseBlockTransformModule,
)

__all__ = [
    "GUIDE_ACTIVATION",
    "RECIPE_ACTIVATION",
    "RECIPE_NAMES",
    "AutoFlowStack",
    "BlockTransformModule",
    "ConditionalBlockTransformModule",
    "ConditionalElementwiseAffine",
    "ConditionalHelperFactory",
    "ConditionalIResNet",
    "ConditionalImpFlow",
    "ConditionalInverseBlockTransformModule",
    "ConditionalMonotone",
    "ConditionalResFlow",
    "ElementwiseAffine",
    "FlowDistribution",
    "HelperFactory",
    "IResNet",
    "ImpFlow",
    "InverseBlockTransformModule",
    "Monotone",
    "ResFlow",
    "conditional_flow_stack",
    "conditional_impflow",
    "conditional_iresnet",
    "conditional_monotone",
    "conditional_resflow",
    "flow_stack",
    "impflow",
    "iresnet",
    "monotone",
    "recipe_options",
    "resflow",
]
