"""Host-library adapters, importable as ``implicit_transforms.plugins.<host>``.

One subpackage per host: :mod:`~implicit_transforms.plugins.nflows` and
:mod:`~implicit_transforms.plugins.pyro`, each with a thin adapter module (``transforms``)
and the model builders and recipes built on it beside it. Each imports its host lazily and
raises an ImportError naming the extra to install when the host is missing.
``nflows_images`` and ``pyro_guides`` are compatibility modules re-exporting names that now
live in the subpackages.
"""
