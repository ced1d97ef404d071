"""Prefect tasks: one per stage, each a thin wrapper that turns tokprob's pure functions
into cached, content-addressed Parquet artifacts and Prefect UI artifacts."""
