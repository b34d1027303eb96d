"""`rlm-env play`: a person (or a script on stdin) acts as the root model in a real episode.

Each reply is read from stdin up to a line holding only `---` (or the end of input); the
observation is printed after it. The episode is real: a sandboxed REPL with the context bound,
sub-calls routed to `--sub-model`, budgets enforced. At the end one JSON line goes to stdout with
the answer, its status, the stop reason, the sandbox mode and the flags.

    printf 'print(len(context))\n---\nFINAL("done")\n' | rlm-env play --context notes.txt --question "?"

(replies are plain text: wrap code in ```repl fences; the example above shows the separators only.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rlm_env.episode import Episode, EpisodeConfig
from rlm_env.evaluate import hard_deadline_s
from rlm_env.tasks.base import ContextDir, ContextFile, Task

SEPARATOR = "---"


def read_replies(stream: IO[str]) -> Iterator[str]:
    """Yield replies separated by lines holding only `---`, as they arrive."""
    lines: list[str] = []
    for line in stream:
        if line.rstrip("\r\n").strip() == SEPARATOR:
            yield "".join(lines)
            lines = []
        else:
            lines.append(line)
    if "".join(lines).strip():
        yield "".join(lines)


def task_from_context_path(path: str, question: str) -> Task:
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"--context: no such file or directory: {path}")
    if p.is_dir():
        context: Any = ContextDir(p)
    elif p.suffix == ".json":
        context = ContextFile(p, "json")
    else:
        context = ContextFile(p, "text")
    return Task(id=f"play:{p.name}", context=context, question=question)


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """`text` with control characters shown as escapes (\\x1b...), never sent raw: cell output
    is the model's, and escape sequences could rewrite or hijack the operator's terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _start_reader(stdin: IO[str]) -> asyncio.Queue:
    """Replies from a daemon thread: a killed episode must not wait for the operator's Enter."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def pump() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the episode is over
            for reply in read_replies(stdin):
                loop.call_soon_threadsafe(queue.put_nowait, reply)
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="play-stdin", daemon=True).start()
    return queue


async def play(
    task: Task,
    config: EpisodeConfig,
    sub_model: Any,
    stdin: IO[str],
    out: IO[str],
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """Play one episode; killed at `deadline_s` (default: the episode's hard deadline, its
    wall-clock budget plus grace), which ends it as `wall_clock`, the budget's stop."""
    episode = Episode(task, config, root_model=sub_model, sub_model=sub_model)
    limit = hard_deadline_s(config) if deadline_s is None else deadline_s
    try:
        try:
            async with asyncio.timeout(limit):
                await _play_turns(episode, stdin, out)
        except TimeoutError:
            await episode.close()
            if episode.record.stop_reason is None:
                episode.record.stop_reason = "wall_clock"
            print("=== the episode ran past its wall-clock limit and was stopped ===\n", file=out, flush=True)
        record = await episode.finish(episode.record.stop_reason or "aborted")
    finally:
        await episode.close()
    summary = {
        "answer": record.answer.content,
        "status": record.answer.status,
        "stop_reason": record.stop_reason,
        "sandbox_mode": record.sandbox_mode,
        "flags": record.flags.model_dump(),
        "turns": record.budget.get("root_turns"),
        "sub_calls": record.budget.get("sub_calls"),
    }
    print(json.dumps(summary, default=str), file=out, flush=True)
    return summary


async def _play_turns(episode: Episode, stdin: IO[str], out: IO[str]) -> None:
    messages = await episode.start()
    for m in messages:
        print(f"=== {m['role']} ===\n{terminal_safe(m['content'])}\n", file=out, flush=True)
    replies = _start_reader(stdin)
    while not episode.done:
        reason = episode._pre_call_stop_reason()
        if reason:
            await episode.finish(reason)
            break
        reply = await replies.get()
        if reply is None:
            await episode.finish("aborted")
            break
        result = await episode.step(reply)
        if result.observation:
            print(f"=== observation ===\n{terminal_safe(result.observation)}\n", file=out, flush=True)


def main(args: Any) -> int:
    from rlm_env.episode.config import load_config
    from rlm_env.models import build_model

    config = load_config(args.config, dict(args.set or []))
    if args.context:
        task = task_from_context_path(args.context, args.question or "")
        if not args.question:
            raise SystemExit("--question is required with --context")
    else:
        from rlm_env.tasks import make_tasks, parse_length

        task = make_tasks(args.task, [parse_length(args.length)], 1, split="test", seed=args.seed)[0]

    async def _run() -> dict[str, Any]:
        sub_model = build_model(args.sub_model, role="sub")
        try:
            return await play(task, config, sub_model, sys.stdin, sys.stdout)
        finally:
            await sub_model.close()

    summary = asyncio.run(_run())
    return 0 if not summary["flags"]["infra_failure"] else 1
