"""Batch entry points: each module runs as ``python -m jobs.NAME`` and as ``mfdask NAME``."""
