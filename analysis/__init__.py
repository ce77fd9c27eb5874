"""Vantage analyzer: DuckDB over the probe's Parquet, verdicts, shutdown detection, reports."""
