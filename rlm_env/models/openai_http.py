"""`OpenAIChatClient`: a `ModelClient` for any server speaking `/v1/chat/completions`.

Use it for hosted APIs and for a vLLM (or SGLang, etc.) server run elsewhere. Every request
asks for `logprobs: true` and for vLLM's `return_token_ids: true` extension. A vLLM server
answers with the exact prompt ids (`prompt_token_ids`) and sampled ids
(`choices[0].token_ids`), so RL can train on them; other servers ignore the extension, and
then the completion says so (`extras["token_ids_missing"]`) instead of the client guessing
ids by re-tokenizing.

Transport failures (connection refused, timeouts, 5xx, 429) are retried a bounded number of
times with a short backoff, then surface as `ModelError`; other 4xx answers (a bad request)
are `ModelError` at once, carrying the server's message.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from typing import Any

import httpx

from .base import Completion, Message, ModelError, PromptTooLong, SamplingParams, looks_like_prompt_too_long

RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class OpenAIChatClient:
    """Chat completions over HTTP (httpx, async). One connection pool per event loop."""

    supports_token_prompts = False  # the chat endpoint takes messages, not token ids

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        max_retries: int = 2,
        max_inflight: int = 64,
        backoff_s: float = 0.5,
        name: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ):
        base_url = base_url.rstrip("/")
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.model = model
        self.name = name or model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_inflight = max_inflight
        self.backoff_s = backoff_s
        self.extra_body = dict(extra_body or {})
        # httpx pools and asyncio semaphores belong to one event loop; keep one per loop.
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._closed = False

    def _loop_state(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if loop not in self._per_loop:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            http = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                limits=httpx.Limits(max_connections=self.max_inflight),
            )
            self._per_loop[loop] = (http, asyncio.Semaphore(self.max_inflight))
        return self._per_loop[loop]

    def _body(self, messages: list[Message], sampling: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "logprobs": True,
            "return_token_ids": True,  # vLLM extension; other servers ignore unknown fields
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return {**body, **self.extra_body}

    async def _post(self, body: dict[str, Any], session_id: str | None) -> tuple[dict[str, Any], int]:
        """POST with bounded retries; returns (json, retries used)."""
        http, _ = self._loop_state()
        headers = {"X-Session-Id": session_id} if session_id else {}  # lets sticky routers route
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = await http.post("/chat/completions", json=body, headers=headers)
            except httpx.TimeoutException as exc:
                problem = f"timed out after {self.timeout_s:.1f} s ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:  # refused, reset, DNS
                problem = f"connection failed: {type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRYABLE_STATUS:
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code >= 400 and looks_like_prompt_too_long(response.text):
                # The caller's prompt did not fit the server's window: its mistake, not ours.
                raise PromptTooLong(f"{self.name}: HTTP {response.status_code}: {response.text[:500]}")
            if response.status_code >= 400:
                raise ModelError(
                    f"{self.name}: HTTP {response.status_code} from {self.base_url}: {response.text[:500]}"
                )
            return response.json(), attempt
        raise ModelError(
            f"{self.name}: {self.base_url} failed after {self.max_retries + 1} attempts: {problem}"
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
        started = time.perf_counter()
        _, limit = self._loop_state()
        async with limit:
            data, retries = await self._post(self._body(messages, sampling), session_id)
        return self._completion(data, retries, started, prompt_token_ids is not None)

    def _completion(
        self, data: dict[str, Any], retries: int, started: float, ids_ignored: bool
    ) -> Completion:
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise ModelError(f"{self.name}: malformed response: {str(data)[:300]}") from exc
        content = (choice.get("logprobs") or {}).get("content")
        logprobs = [float(item["logprob"]) for item in content] if content else None
        prompt_ids, completion_ids = data.get("prompt_token_ids"), choice.get("token_ids")
        extras: dict[str, Any] = {}
        if prompt_ids is None or completion_ids is None:
            prompt_ids = completion_ids = None
            extras["token_ids_missing"] = "server did not return token ids"
        if logprobs is not None and completion_ids is not None and len(logprobs) != len(completion_ids):
            extras["logprobs_misaligned"] = f"{len(logprobs)} logprobs for {len(completion_ids)} ids"
        if ids_ignored:
            extras["prompt_token_ids_ignored"] = "the chat endpoint takes messages only"
        if retries:
            extras["retries"] = retries
        if choice.get("stop_reason") is not None:
            extras["stop_reason"] = choice["stop_reason"]
        if data.get("usage"):
            extras["usage"] = data["usage"]
        finish = choice.get("finish_reason") or "abort"
        return Completion(
            text=(choice.get("message") or {}).get("content") or "",
            finish_reason=finish if finish in ("stop", "length", "abort") else "stop",
            prompt_token_ids=prompt_ids,
            completion_token_ids=completion_ids,
            logprobs=logprobs,
            model=data.get("model", self.model),
            latency_s=time.perf_counter() - started,
            extras=extras,
        )

    async def close(self) -> None:
        """Close this loop's connection pool (pools of other, finished loops are dropped)."""
        self._closed = True
        state = self._per_loop.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state[0].aclose()
        self._per_loop.clear()
