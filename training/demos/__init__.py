"""Scripted demonstrations: a data source for training a small RLM, not a model.

An *expert* is a scripted root policy that writes the REPL code a capable RLM would write on one
task family (probe the context, derive the search from the question, search, extract with code,
verify, `FINAL`; broaden a search that came back empty). It runs through the real episode loop,
in the real sandbox, and returns the token ids of its replies under the default model's
tokenizer, so its records are exactly what a trainer reads (`training.samples`). Every record
names its source: the root calls' model is "scripted-expert/<strategy>" and the task metadata
carries `data_source: "scripted-demonstration"`.

    rlm-env demos --task niah --lengths 8k,32k --episodes 50 --split train --out runs/demos

Families with experts: see `EXPERTS`. Demonstrations are made on the train split only by
default; evaluation uses the test split, whose words and templates the experts never saw.
"""

from training.demos import multihop, niah, oolong
from training.demos.policy import POLICY_PREFIX, ExpertPolicy, question_from_prompt

EXPERTS = {"niah": niah, "multihop": multihop, "oolong": oolong}
"""Family -> module with `STRATEGIES` and `script(episode_id, question, strategy=None)`."""

__all__ = ["EXPERTS", "POLICY_PREFIX", "ExpertPolicy", "question_from_prompt"]
