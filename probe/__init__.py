"""Vantage probe: measures DNS, HTTP(S), TLS and tunnel reachability and writes Parquet."""

__version__ = "0.1.0"
