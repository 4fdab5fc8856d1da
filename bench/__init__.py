"""Benchmarks (not tests): `oms bench NAME` runs one, prints its figures and writes them as JSON."""
