"""Host-library adapters, importable as ``implicit_transforms.plugins.<host>``.

Each adapter imports its host lazily and raises an ImportError naming the extra to install
when the host is missing.
"""
