"""`VLLMRayClient`: a `ModelClient` over N vLLM replicas running as Ray actors.

Routing follows what RL rollouts need:
- Root turns carry a `session_id` (the episode). All turns of one episode go to the same
  replica, so each turn reuses the KV of the growing transcript (prefix cache). The choice is
  a rendezvous hash of the session over the live replicas: stable while that replica lives,
  and when it dies only its own sessions move.
- Sub-calls (`session_id=None`, e.g. an `llm_batch` fan-out) go to the least-loaded replica,
  counting requests this client has outstanding on each.
- One semaphore bounds the client's requests in flight overall (`max_inflight`).

Placement: with `EngineConfig.placement_strategy` the replicas are placed through one Ray
placement group, a bundle per replica (`actor_num_cpus` CPUs, `gpus_per_replica` GPUs), packed
or spread over the cluster's nodes; the group is removed when the client shuts down.

Failures: a replica that dies mid-request (Ray raises `RayActorError`) is replaced by a fresh
actor, which reloads the latest weights, and the request is retried, at most `max_retries`
times, each retry recorded in `Completion.extras["retries"]`. A request that outlives
`request_timeout_s` is cancelled inside the engine and reported as `ModelError`, as are
exhausted retries and engine-side errors: the episode treats all of them as infrastructure.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Completion, Message, ModelError, PromptTooLong, SamplingParams, looks_like_prompt_too_long
from .checkpoint import weights_identity
from .config import EngineConfig
from .vllm_engine import VLLMReplica, replica_env


def replica_bundle(config: EngineConfig) -> dict[str, float]:
    """The Ray resources one replica's placement-group bundle holds."""
    # Ray refuses an all-zero bundle; a token CPU share keeps "0 CPUs" placeable.
    bundle = {"CPU": max(config.actor_num_cpus, 0.01)}
    if config.gpus_per_replica:
        bundle["GPU"] = config.gpus_per_replica
    return bundle


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray instance unless one is already up (idempotent)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)


class _ReplicaUnavailable(Exception):
    """A replica whose start() failed; handled like a dead one (replace, retry)."""


@functools.cache
def _remote_replica_class() -> Any:
    import ray

    return ray.remote(VLLMReplica)


@dataclass
class _Slot:
    """One replica position. Its actor may be replaced; the name stays."""

    index: int
    name: str
    actor: Any = None
    ready: Any = None  # ObjectRef of the actor's start(); awaited before each call
    incarnation: int = 0
    inflight: int = 0
    healthy: bool = True


def _rendezvous_score(session_id: str, slot_name: str) -> int:
    digest = hashlib.blake2b(f"{session_id}\0{slot_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class VLLMRayClient:
    """Async client over `config.replicas` vLLM engines in Ray. Build, then `start()`."""

    supports_token_prompts = True

    def __init__(self, model: str, config: EngineConfig | None = None, *, name: str | None = None):
        from transformers import AutoTokenizer

        self.model = model
        self.config = config or EngineConfig()
        self.name = name or Path(model).name
        self.request_timeout_s = self.config.request_timeout_s  # public: tests/callers may tighten it
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.weight_version = 0
        self.checkpoint: str | None = weights_identity(model)
        """Identity of the weights served now (see `checkpoint.py`); survives restarts."""
        self.context_window = self.config.max_model_len
        self._weights_path: str | None = None
        self._slots = [_Slot(i, f"{self.name}/r{i}") for i in range(self.config.replicas)]
        self._limits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._round_robin = 0
        self._closed = False
        self._placement: Any = None
        self.start_seconds: float | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def _launch(self, slot: _Slot) -> None:
        """Create (or re-create) the actor of `slot`; its start() ref becomes `slot.ready`."""

        actor_cls = _remote_replica_class().options(
            num_cpus=self._bundle()["CPU"] if self._placement is not None else self.config.actor_num_cpus,
            num_gpus=self.config.gpus_per_replica,
            max_concurrency=max(1000, self.config.max_inflight * 2),
            runtime_env={"env_vars": replica_env(self.config, slot.index)},
            scheduling_strategy=self._scheduling(slot),
        )
        # Each replica (and each replacement) samples from its own seed: replicas sharing one
        # drew identical samples for identical prompts, so a GRPO group spread over them had no
        # variance, hence no advantage and no gradient.
        seed = self.config.seed + 1009 * slot.index + 7919 * slot.incarnation
        slot.actor = actor_cls.remote(self.model, {**self.config.model_dump(), "seed": seed}, slot.name)
        slot.ready = slot.actor.start.remote(self._weights_path, self.weight_version, self.checkpoint)

    def _bundle(self) -> dict[str, float]:
        return replica_bundle(self.config)

    def _scheduling(self, slot: _Slot) -> Any:
        if self._placement is None:
            return None
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(
            placement_group=self._placement, placement_group_bundle_index=slot.index
        )

    def _reserve(self) -> None:
        """One placement-group bundle per replica, placed by `config.placement_strategy`."""
        import ray
        from ray.util.placement_group import placement_group

        if self.config.placement_strategy is None or self._placement is not None:
            return
        group = placement_group(
            [self._bundle() for _ in self._slots], strategy=self.config.placement_strategy
        )
        try:
            ray.get(group.ready(), timeout=self.config.start_timeout_s)
        except Exception as exc:
            ray.util.remove_placement_group(group)
            raise ModelError(
                f"{self.name}: no room for {len(self._slots)} replica bundle(s) {self._bundle()} "
                f"under {self.config.placement_strategy}: {exc}"
            ) from exc
        self._placement = group

    def placement(self) -> Any:
        """The replicas' Ray placement group (None without `placement_strategy`)."""
        return self._placement

    def start(self) -> VLLMRayClient:
        """Start every replica (in parallel) and block until all answer. Returns self."""
        import ray

        ensure_ray()
        self._reserve()
        started = time.perf_counter()
        for slot in self._slots:
            self._launch(slot)
        try:
            ray.get([slot.ready for slot in self._slots], timeout=self.config.start_timeout_s)
        except Exception as exc:
            self._kill_all()
            raise ModelError(
                f"vLLM replicas of {self.model} failed to start: {exc}\n(the engine's own log is in the "
                "Ray worker logs, /tmp/ray/session_latest/logs/worker-*.err)"
            ) from exc
        self.start_seconds = time.perf_counter() - started
        return self

    def _kill_all(self) -> None:
        import ray

        for slot in self._slots:
            if slot.actor is not None:
                try:
                    ray.get(slot.actor.shutdown.remote(), timeout=30)
                except Exception:
                    pass  # already dead or stuck: kill below regardless
                ray.kill(slot.actor, no_restart=True)
                slot.actor = None
        if self._placement is not None:
            ray.util.remove_placement_group(self._placement)
            self._placement = None

    def shutdown(self) -> None:
        """Blocking close, for code without an event loop (fixtures, atexit). Idempotent."""
        if not self._closed:
            self._closed = True
            self._kill_all()

    async def close(self) -> None:
        """Shut every replica down. Idempotent."""
        await asyncio.to_thread(self.shutdown)

    async def wait_ready(self) -> None:
        """Wait until every replica (replacements included) has started."""
        for slot in self._slots:
            await slot.ready
            slot.healthy = True

    def replica_actors(self) -> dict[str, Any]:
        """Replica name -> its current Ray actor handle (diagnostics and failure tests)."""
        return {slot.name: slot.actor for slot in self._slots}

    # ---- routing ---------------------------------------------------------------------------

    def _limit(self) -> asyncio.Semaphore:
        # Semaphores bind to the loop that first waits on them; keep one per loop so the
        # client survives being used from several loops (e.g. per-test loops).
        loop = asyncio.get_running_loop()
        if loop not in self._limits:
            self._limits[loop] = asyncio.Semaphore(self.config.max_inflight)
        return self._limits[loop]

    def _refresh_health(self) -> None:
        """Mark replacement replicas healthy once their start() finished (non-blocking)."""
        import ray

        for slot in self._slots:
            if not slot.healthy:
                done, _ = ray.wait([slot.ready], timeout=0)
                slot.healthy = bool(done)

    def _pick(self, session_id: str | None) -> _Slot:
        self._refresh_health()
        candidates = [slot for slot in self._slots if slot.healthy] or self._slots
        if session_id is not None:
            return max(candidates, key=lambda slot: _rendezvous_score(session_id, slot.name))
        self._round_robin += 1  # breaks ties so an idle pool still spreads requests
        count = len(candidates)
        return min(candidates, key=lambda slot: (slot.inflight, (slot.index - self._round_robin) % count))

    def _replace(self, slot: _Slot, dead_incarnation: int) -> None:
        """Start a replacement for `slot` unless another request already did."""
        if slot.incarnation != dead_incarnation or self._closed:
            return
        slot.incarnation += 1
        self._launch(slot)
        slot.healthy = False  # routed around until its replacement has started

    # ---- requests --------------------------------------------------------------------------

    async def _call_once(self, slot: _Slot, request: dict[str, Any]) -> dict[str, Any]:
        import ray
        from ray.exceptions import RayError

        try:
            await slot.ready
        except RayError as exc:  # the replica never came up: as good as dead
            raise _ReplicaUnavailable(f"{slot.name} failed to start: {exc}") from exc
        ref = slot.actor.generate.remote(request)
        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)  # abort inside the engine too, not just stop waiting
            raise

    async def _run(self, request: dict[str, Any], session_id: str | None) -> Completion:
        from ray.exceptions import RayActorError, RayTaskError

        started = time.perf_counter()
        retries: list[dict[str, Any]] = []
        for _attempt in range(self.config.max_retries + 1):
            slot = self._pick(session_id)
            incarnation = slot.incarnation
            slot.inflight += 1
            remaining = self.request_timeout_s - (time.perf_counter() - started)
            try:
                result = await asyncio.wait_for(self._call_once(slot, request), timeout=max(remaining, 0.001))
            except TimeoutError as exc:
                raise ModelError(
                    f"{self.name}: request timed out after {self.request_timeout_s:.1f} s on {slot.name}"
                ) from exc
            except (RayActorError, _ReplicaUnavailable) as exc:
                retries.append(
                    {"replica": slot.name, "incarnation": incarnation, "error": type(exc).__name__}
                )
                self._replace(slot, incarnation)
                continue
            except RayTaskError as exc:
                if looks_like_prompt_too_long(str(exc.cause)):
                    # The caller's prompt, not the engine, is at fault (see PromptTooLong).
                    raise PromptTooLong(f"{self.name}: {exc.cause}", window=self.context_window) from exc
                raise ModelError(f"{self.name}: engine error on {slot.name}: {exc.cause!r}") from exc
            finally:
                slot.inflight -= 1
            return self._completion(result, started, retries, incarnation)
        raise ModelError(
            f"{self.name}: replica died and {self.config.max_retries} retries ran out ({retries[-1]['replica']})"
        )

    def _completion(self, result: dict, started: float, retries: list, incarnation: int) -> Completion:
        extras: dict[str, Any] = {"engine_s": result["engine_s"], "incarnation": incarnation}
        if result["stop_reason"] is not None:
            extras["stop_reason"] = result["stop_reason"]
        if retries:
            extras["retries"] = retries
        if result.get("prompt_logprobs") is not None:
            extras["prompt_logprobs"] = result["prompt_logprobs"]
        return Completion(
            text=result["text"],
            finish_reason=result["finish_reason"],
            prompt_token_ids=result["prompt_token_ids"],
            completion_token_ids=result["completion_token_ids"],
            logprobs=result["logprobs"],
            model=self.name,
            weight_version=result["weight_version"],
            checkpoint=result.get("checkpoint"),
            checkpoint_changed=bool(result.get("checkpoint_changed")),
            replica=result["replica"],
            latency_s=time.perf_counter() - started,
            extras=extras,
        )

    async def generate(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        *,
        prompt_token_ids: list[int] | None = None,
        session_id: str | None = None,
    ) -> Completion:
        if self._closed:
            raise ModelError(f"{self.name}: client is closed")
        request = {
            "messages": messages,
            "prompt_token_ids": list(prompt_token_ids) if prompt_token_ids is not None else None,
            "sampling": {**sampling.__dict__, "stop": list(sampling.stop)},
        }
        async with self._limit():
            return await self._run(request, session_id)

    async def generate_many(
        self, messages_list: list[list[Message]], sampling: SamplingParams, *, return_exceptions: bool = False
    ) -> list[Completion]:
        """Many independent requests (an `llm_batch`), spread least-loaded, results in order.

        With `return_exceptions=True` a failed request yields its `ModelError` in its place
        instead of failing the whole batch.
        """
        tasks = [self.generate(messages, sampling) for messages in messages_list]
        return await asyncio.gather(*tasks, return_exceptions=return_exceptions)

    async def prompt_logprobs(
        self, token_ids: list[int], *, session_id: str | None = None
    ) -> list[float | None]:
        """The engine's logprob of every token of `token_ids` given the tokens before it (None
        for the first), as the engine scores a prompt: compare with a learner's recomputation
        (`rlm_env.models.logprob_check`). Samples one throwaway token; bypasses the prefix cache.
        """
        if self._closed:
            raise ModelError(f"{self.name}: client is closed")
        request = {
            "messages": [],
            "prompt_token_ids": list(token_ids),
            "prompt_logprobs": True,
            "sampling": {**SamplingParams(max_tokens=1, temperature=0.0).__dict__, "stop": []},
        }
        async with self._limit():
            completion = await self._run(request, session_id)
        return completion.extras["prompt_logprobs"]

    async def reload_weights(self, weights_path: str, checkpoint: str | None = None) -> int:
        """Load new weights into every replica (and into any later replacement); returns the
        new weight version. `checkpoint` names them in every later record (e.g. "run/step-3");
        without it the new weight files are hashed ("sha:<sha12>"). Call between rollout
        batches: in-flight requests are not paused (they come back `checkpoint_changed`)."""
        for slot in self._slots:
            await slot.ready
        if checkpoint is None:
            checkpoint = await asyncio.to_thread(weights_identity, weights_path, "sha")
        version = self.weight_version + 1
        await asyncio.gather(
            *(slot.actor.reload_weights.remote(weights_path, version, checkpoint) for slot in self._slots)
        )
        self._weights_path, self.weight_version, self.checkpoint = weights_path, version, checkpoint
        return version

    async def stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(slot.actor.stats.remote() for slot in self._slots)))
