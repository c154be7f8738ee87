"""The batch jobs: each module runs as ``mfdask NAME`` and as ``python -m jobs.NAME``.

A job module provides ``HELP`` (one line), ``add_arguments(parser)``, ``run(args) -> int``
and ``main(argv)``; :mod:`mfdask.cli` dispatches to ``run``, while ``jobs/NAME.py`` at the
top of a checkout (and ``python -m mfdask.jobs.NAME``) call ``main``.
"""
