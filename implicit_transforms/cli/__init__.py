"""The command-line trainer (``implicit-transforms train | evaluate | sample``).

Needs the ``nflows`` extra (the models are built from :mod:`implicit_transforms.plugins.nflows`);
``plot`` for the figure and ``progress`` for the progress bar are optional.

Modules: ``data`` (toy densities, files, splits), ``config`` (settings and flags), ``models``
(flows), ``session`` (data + flow on a device), ``training`` (the loop, EMA, checkpoints),
``evaluation`` (likelihood, round trips, solver statistics), ``figures``, ``report`` and
``main`` (the argument parser).
"""
