"""Helpers shared by the tests and the benchmarks (imported as ``tests.support.*``; pyproject's
pytest ``pythonpath`` and the benchmarks' sys.path put the repository root on the path):
synthetic-data generators (scenario), the OONI netem comparison (ooni_compare), verdict checks,
and the paths of the repository and of ../shared/data (paths)."""
