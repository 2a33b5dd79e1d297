"""Benchmarks: accuracy and speed of OneClickRegistration against the tools a
user would otherwise pick (SimpleITK, ANTsPy, elastix), on cases with a known
answer built from aligned real image pairs.  Run with `make bench`.
"""
