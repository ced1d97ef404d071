"""Prefect flows: each file wires tasks into one analysis and reads like its DAG."""
