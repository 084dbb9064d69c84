"""Molecules domain: QM9 loading (``data``) and EDM's molecule metrics (``metrics``).

Submodules are imported on use (``from sciddpm.domains.molecules.metrics import evaluate_molecules``)
so that the metrics stay importable without torch in worker processes.
"""
