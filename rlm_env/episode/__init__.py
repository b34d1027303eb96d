"""The episode: the core contract (see `episode.py`), its config, budget ledger and record."""

from rlm_env.episode.budget import BudgetLedger
from rlm_env.episode.config import BudgetConfig, EpisodeConfig, SamplingConfig, load_config
from rlm_env.episode.episode import Episode, StepResult
from rlm_env.episode.record import SCHEMA_VERSION, EpisodeRecord, TrajectoryWriter, check_record, read_records
from rlm_env.episode.text_env import TextEpisode

__all__ = [
    "SCHEMA_VERSION",
    "BudgetConfig",
    "BudgetLedger",
    "Episode",
    "EpisodeConfig",
    "EpisodeRecord",
    "SamplingConfig",
    "StepResult",
    "TextEpisode",
    "TrajectoryWriter",
    "check_record",
    "load_config",
    "read_records",
]
