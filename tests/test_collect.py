"""`rlm-env collect` with a scripted root (fast): records, the Parquet dataset read by
`datasets`, contexts by reference, filters and the root-sample export, resume after a full disk.
The real-engine run is in test_collect_engine.py; a killed run and Ray workers in
test_collect_workers.py."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json

import pyarrow.parquet as pq
import pytest

from rewards import Rubric, RubricConfig
from rlm_env.collect import RecordFilter, export_run, load_collected, load_samples, resolve_context_ref
from rlm_env.collect.dataset import DATASET_SCHEMA_VERSION, dataset_files
from rlm_env.collect.run import CollectConfig, collect_worker, worker_dir, worker_tasks
from rlm_env.episode import TrajectoryWriter, read_records
from rlm_env.episode.config import config_from_dict
from tests.collect_helpers import scripted_models

EPISODE = config_from_dict({}, {"budget.max_depth": 2})


def config(tmp_path, **kw) -> CollectConfig:
    values = dict(task="niah", lengths=["1k", "2k"], episodes=3, concurrency=3, out=str(tmp_path / "run"))
    return CollectConfig(**{**values, **kw})


async def collect(cfg: CollectConfig):
    root, sub = scripted_models()
    return await collect_worker(cfg, EPISODE, root, sub, Rubric(RubricConfig()))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One collected run shared by the read-only tests below."""
    import asyncio

    cfg = config(tmp_path_factory.mktemp("collect"))
    records = asyncio.run(collect(cfg))
    return cfg, records


@pytest.mark.slow  # the shared run's setup (tokenizer load, 6 episodes) takes ~10 s on 2 busy cores
def test_collect_writes_every_episode_once_and_a_loadable_dataset(run):
    cfg, records = run
    ids = [t.id for t in worker_tasks(cfg)]
    assert sorted(r.episode_id for r in records) == sorted(ids) and len(ids) == 6
    lines = (worker_dir(cfg.out, "w0") / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 6
    ds = load_collected(cfg.out)
    assert ds.num_rows == 6 and set(ds["episode_id"]) == set(ids)
    assert set(ds["schema_version"]) == {DATASET_SCHEMA_VERSION}
    meta = pq.read_schema(dataset_files(cfg.out)[0]).metadata
    assert meta[b"rlm_env_dataset_schema_version"] == str(DATASET_SCHEMA_VERSION).encode()
    by_id = {r.episode_id: r for r in records}
    for row in ds:
        record = by_id[row["episode_id"]]
        # rubric components are columns, equal to the record's rewards
        for name in ("correctness", "format", "cost", "mask"):
            assert row[f"reward_{name}"] == pytest.approx(record.rewards[name])
        assert row["reward"] == pytest.approx(record.rewards["reward"])
        assert row["root_token_ids"] == record.root_sample.token_ids
        assert row["root_loss_mask"] == record.root_sample.loss_mask
        assert row["root_logprobs"] == pytest.approx(record.root_sample.logprobs)
        assert row["child_episodes"] == len(record.children) == 1 and row["sub_calls"] >= 2
        assert json.loads(row["record_json"])["episode_id"] == record.episode_id
    # both rewards occur, so the filters below have something to separate
    assert {0.0, 1.0} <= set(ds["reward"])


def test_contexts_are_stored_by_reference_and_rebuild_exactly(run):
    cfg, records = run
    blob = b"".join(open(p, "rb").read() for p in dataset_files(cfg.out))
    ds = load_collected(cfg.out)
    for row in ds:
        task = resolve_context_ref(json.loads(row["context_ref"]))
        assert task.id == row["task_id"]
        assert hashlib.sha256(task.context.encode()).hexdigest() == row["context_sha256"]
        middle = task.context[len(task.context) // 2 :][:300]  # never printed by the script
        assert middle not in row["record_json"]
        assert middle.encode() not in blob
    jsonl = (worker_dir(cfg.out, "w0") / "trajectories.jsonl").read_text()
    assert all(resolve_context_ref(json.loads(r["context_ref"])).context[3000:3300] not in jsonl for r in ds)


def test_filters_keep_what_they_say(run, tmp_path):
    cfg, records = run
    cases = {
        RecordFilter(min_reward=0.5): [r for r in records if r.rewards["reward"] >= 0.5],
        RecordFilter(max_reward=0.5): [r for r in records if r.rewards["reward"] <= 0.5],
        RecordFilter(stop_reasons=("answer",)): [r for r in records if r.stop_reason == "answer"],
        RecordFilter(stop_reasons=("max_turns",)): [],
        RecordFilter(answer_statuses=("confirmed",)): [r for r in records if r.answer.status == "confirmed"],
        RecordFilter(families=("oolong",)): [],
        RecordFilter(lengths=("2k",)): [r for r in records if r.task["metadata"]["target_tokens"] == 2000],
        RecordFilter(lengths=("1000",)): [r for r in records if r.task["metadata"]["target_tokens"] == 1000],
        RecordFilter(trainable=True, min_reward=1.0): [
            r for r in records if r.rewards["reward"] >= 1.0 and r.training_exclusion() is None
        ],
    }
    for keep, expected in cases.items():
        out = tmp_path / "kept.jsonl"
        n = export_run(cfg.out, out, keep)
        assert n == len(expected), keep
        assert sorted(r.episode_id for r in read_records(out)) == sorted(r.episode_id for r in expected)
    assert 0 < len(cases[RecordFilter(min_reward=0.5)]) < len(records)
    n = export_run(cfg.out, tmp_path / "kept.parquet", RecordFilter(lengths=("1k",)))
    assert n == 3 and pq.read_table(tmp_path / "kept.parquet").num_rows == 3


def test_root_sample_export_is_what_training_reads(run, tmp_path):
    from training.samples import TrainingSample, samples_from_records

    cfg, records = run
    for name in ("samples.parquet", "samples.jsonl"):
        n = export_run(cfg.out, tmp_path / name, RecordFilter(trainable=True), samples=True)
        loaded = load_samples(tmp_path / name)
        expected, _ = samples_from_records(records)
        assert n == len(loaded) == len(expected) == 6
        assert all(isinstance(s, TrainingSample) for s in loaded)
        by_id = {s.episode_id: s for s in expected}
        for s in loaded:
            want = dataclasses.asdict(by_id[s.episode_id])
            got = dataclasses.asdict(s)
            assert got["token_ids"] == want["token_ids"] and got["loss_mask"] == want["loss_mask"]
            assert got["logprobs"] == pytest.approx(want["logprobs"])
            assert got["advantage"] == pytest.approx(want["advantage"])
            assert sum(s.loss_mask) > 0 and len(s.token_ids) == len(s.loss_mask) == len(s.logprobs)


@pytest.mark.slow
async def test_a_full_disk_stops_the_run_and_the_rerun_finishes_it_exactly_once(tmp_path, monkeypatch):
    cfg = config(tmp_path, concurrency=2)
    real_write = TrajectoryWriter.write
    written = []

    def write_until_full(self, record):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, record)
        written.append(record.episode_id)

    monkeypatch.setattr(TrajectoryWriter, "write", write_until_full)
    with pytest.raises(SystemExit, match="No space left"):
        await collect(cfg)
    path = worker_dir(cfg.out, "w0") / "trajectories.jsonl"
    assert [r.episode_id for r in read_records(path)] == written
    monkeypatch.setattr(TrajectoryWriter, "write", real_write)

    # the Parquet step can hit a full disk too: nothing torn, the JSONL intact, a clear message
    import rlm_env.collect.dataset as dataset

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dataset.pq, "write_table", full)
    with pytest.raises(SystemExit, match="trajectories are safe"):
        await collect(cfg)
    assert not list((tmp_path / "run" / "data").iterdir())
    monkeypatch.undo()

    records = await collect(cfg)
    ids = [r.episode_id for r in read_records(path)]
    assert len(ids) == len(set(ids)) == 6 and ids[:2] == written
    assert sorted(ids) == sorted(r.episode_id for r in records)
    assert load_collected(cfg.out).num_rows == 6


def test_the_cli_collects_exports_and_names_workers_by_slice(tmp_path):
    from rlm_env.cli import build_parser, main
    from rlm_env.collect.run import load_collect_config

    out = tmp_path / "cli"
    common = ["--task", "niah", "--lengths", "1k", "--episodes", "3", "--model", "echo", "--out", str(out)]
    args = [*common, "--set", "budget.max_root_turns=2"]
    assert main(["collect", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"][0]["episodes"] == 3 and summary["config"]["split"] == "train"
    assert load_collected(out).num_rows == 3
    assert main(["export", str(out), "--out", str(tmp_path / "e.jsonl"), "--stop-reason", "max_turns"]) == 0
    assert len(read_records(tmp_path / "e.jsonl")) == 3  # echo never writes code: every run hits the limit
    assert main(["export", str(out), "--out", str(tmp_path / "s.jsonl"), "--samples", "--trainable"]) == 0
    assert load_samples(tmp_path / "s.jsonl") == []  # a test double has no token ids: nothing to train on
    cfg, _ = load_collect_config(
        build_parser().parse_args(["collect", *common, "--worker-index", "1", "--num-workers", "2"])
    )
    assert cfg.worker == "w1" and [t.id for t in worker_tasks(cfg)] == ["niah-train-1000-s1"]
    # slices generate only their own tasks, and are exactly build_tasks' list dealt round-robin
    from rlm_env.evaluate import build_tasks

    two = cfg.model_copy(update={"lengths": ["1k", "2k"], "num_workers": 3})
    everything = build_tasks(two)
    for i in range(3):
        mine = worker_tasks(two.model_copy(update={"worker_index": i}))
        assert [t.describe() for t in mine] == [t.describe() for t in everything[i::3]]


async def test_a_user_dataset_is_collected_with_its_contexts_by_reference(tmp_path):
    secret = "".join(f"line {i}: the code is {i * 7919 % 10007}\n" for i in range(3000))
    rows = [{"id": f"u{i}", "context": secret, "question": "code?", "answer": str(i)} for i in range(2)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CollectConfig(
        dataset=str(tmp_path / "mine.jsonl"), task=None, episodes=5, out=str(tmp_path / "run")
    )
    records = await collect(cfg)
    assert sorted(r.episode_id for r in records) == ["u0", "u1"]
    ds = load_collected(cfg.out)
    refs = [json.loads(x) for x in ds["context_ref"]]
    assert [(r["kind"], r["row"], r["id"]) for r in sorted(refs, key=lambda r: r["id"])] == [
        ("dataset", 1, "u0"),  # rows count from 1, as the loader numbers them
        ("dataset", 2, "u1"),
    ]
    assert set(ds["family"]) == {"dataset"} and set(ds["context_bytes"]) == {len(secret)}
    blob = b"".join(open(p, "rb").read() for p in dataset_files(cfg.out))
    assert secret[30000:30300].encode() not in blob and all(
        secret[30000:30300] not in j for j in ds["record_json"]
    )
