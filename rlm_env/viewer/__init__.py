"""The run viewer: `rlm-env view DIR` serves a table of a run's episodes and each episode as a
tree (see `app` for the pages, `runs` for what is read). Local only, no network at run time."""

from rlm_env.viewer.app import create_app

__all__ = ["create_app"]
