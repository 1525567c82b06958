"""Planners (pure: frame table → plan) and graph builders (plan → dask collections)."""
