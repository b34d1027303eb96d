"""Benchmarks run by `rlm-env bench`: quality (accuracy versus length) and perf (overhead)."""
