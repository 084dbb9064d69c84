"""Domain adapters of sciddpm, importable as ``sciddpm.domains.<name>``.

Each domain folder holds ``data.py`` (loaders), ``backbone.py`` (the GPU network),
``metrics.py`` (the domain's published evaluation) and ``adapter.py`` (the Domain object).
The core (``sciddpm``) never imports a domain.
"""
