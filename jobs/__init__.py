"""Entry scripts of a checkout: ``python -m jobs.NAME`` runs :mod:`mfdask.jobs` ``.NAME``.

Each ``jobs/NAME.py`` only imports ``main`` from ``mfdask.jobs.NAME``, where the job lives,
so the installed wheel carries the jobs inside ``mfdask`` and adds no top-level ``jobs``.
"""
