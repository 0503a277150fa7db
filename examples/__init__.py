"""Runnable examples: ``examples/train.py`` (DDPM training with optional DTR and ANT) and its helpers.

The helpers are importable as ``examples.<name>`` from the repository root, which is how the
benchmarks under ``benchmarks/`` reuse them; ``python examples/train.py`` puts the root on
``sys.path`` itself.
"""
