"""Ingest: other projects' measurements as Vantage datasets (the same schema and files as the
probe's), one subpackage per source. Today: OONI (analysis/ingest/ooni/)."""
