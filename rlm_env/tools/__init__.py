"""Example custom tools (see rlm_env/episode/tools.py and configs/tools.toml)."""
