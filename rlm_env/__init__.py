"""rlm-env."""
