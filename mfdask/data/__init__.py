"""Readers, validation, ingest to canonical Parquet, splits and synthetic data."""
