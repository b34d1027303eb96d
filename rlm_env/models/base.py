"""The one model interface every engine implements.

The episode never talks to vLLM, an HTTP server or transformers directly: it talks to a
`ModelClient`. A client takes chat messages (and, when the caller already holds the exact
token ids of the prompt, those ids) plus sampling settings, and returns a `Completion`: the
text, the prompt and completion token ids, the per-token logprobs of what was sampled, and the
finish reason. Trainers train on exactly those ids, so a client that cannot return them says so
(`Completion.token_ids_available = False`) instead of re-tokenizing behind the caller's back.

Failures split in two. `ModelError` is an infrastructure failure (server refused, timed out,
replica died and retries ran out): the episode flags it as infra, never as the model's fault.
Its one subclass that is the caller's fault, `PromptTooLong` (`infra = False`), says a prompt
did not fit the engine's window: the policy wrote it, so it is charged to the policy. Everything
else (a model that writes nonsense) is just a completion.

Optional attributes a client may carry (read with `getattr`, so test doubles need none):
`tokenizer` (a transformers tokenizer), `supports_token_prompts` (it takes prompt ids),
`context_window` (prompt + completion tokens the engine can hold), `checkpoint` (identity of
the weights it serves now).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]
"""A chat message: {"role": "system" | "user" | "assistant", "content": str}."""


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one model call (a subset every engine understands)."""

    max_tokens: int = 512
    """Most completion tokens to sample."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    stop: tuple[str, ...] = ()
    """Strings that end the completion (not included in the text)."""
    seed: int | None = None
    """Per-request seed, for reproducible sampling where the engine supports it."""

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed (unknown names raise TypeError)."""
        values = {**self.__dict__, **changes}
        if "stop" in changes and isinstance(values["stop"], list):
            values["stop"] = tuple(values["stop"])
        return SamplingParams(**values)


@dataclass
class Completion:
    """What one model call returned."""

    text: str
    """The sampled text (without the end-of-sequence token)."""
    finish_reason: str
    """"stop" (end token or stop string), "length" (hit max_tokens), or "abort"."""
    prompt_token_ids: list[int] | None = None
    """The exact prompt ids the engine consumed, when it reports them."""
    completion_token_ids: list[int] | None = None
    """The exact sampled ids (including a final end token if one was sampled)."""
    logprobs: list[float] | None = None
    """Logprob of each sampled id under the sampling policy, aligned with completion_token_ids."""
    model: str = ""
    """Name of the model that answered."""
    weight_version: int | None = None
    """Version of the weights that sampled this (bumped by in-place weight reloads)."""
    checkpoint: str | None = None
    """Identity of those weights, stable across restarts ("base:<sha>" or the name given to
    `reload_weights`); None when unknown or when a reload happened mid-request."""
    checkpoint_changed: bool = False
    """True when the weights were reloaded while this request was being sampled."""
    replica: str | None = None
    """Which engine replica served it (for routing diagnostics)."""
    latency_s: float = 0.0
    """Wall time of the call as seen by the client."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Engine-specific facts worth keeping (e.g. why token ids are missing)."""

    @property
    def token_ids_available(self) -> bool:
        """True when both prompt and completion ids came back from the engine itself."""
        return self.prompt_token_ids is not None and self.completion_token_ids is not None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids or ())

    @property
    def num_completion_tokens(self) -> int:
        return len(self.completion_token_ids or ())


class ModelError(RuntimeError):
    """An infrastructure failure behind a model call: refused, timed out, replica lost.

    Raised by clients; the episode records it with `infra=True` and, inside the REPL, turns it
    into a `SubCallError` the model's code can catch.
    """

    infra = True


class PromptTooLong(ModelError):
    """The prompt (plus the tokens asked for) does not fit the engine's window. The caller
    wrote that prompt, so it is the caller's mistake (a model's, inside an episode), not the
    infrastructure's: `infra = False`. `prompt_tokens` and `window` say by how much."""

    infra = False

    def __init__(self, message: str, prompt_tokens: int | None = None, window: int | None = None):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.window = window


_TOO_LONG_MARKERS = ("maximum model length", "maximum context length", "longer than the maximum")


def looks_like_prompt_too_long(message: str) -> bool:
    """True for an engine's own refusal of an over-long prompt (vLLM, OpenAI-style servers)."""
    lowered = message.lower()
    return any(marker in lowered for marker in _TOO_LONG_MARKERS)


@runtime_checkable
class ModelClient(Protocol):
    """An async text/token model. Implementations: scripted (tests), vLLM-in-Ray, OpenAI HTTP,
    transformers."""

    name: str
    """Human-readable model name, recorded in every call."""

    async def generate(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        *,
        prompt_token_ids: list[int] | None = None,
        session_id: str | None = None,
    ) -> Completion:
        """Sample one completion.

        `prompt_token_ids`, when given, is the exact prompt to feed the engine (the messages
        are then only for the record and for engines that cannot take ids). `session_id` names
        the episode, so engines can route all its turns to one replica (prefix cache).
        Raises `ModelError` on infrastructure failure.
        """
        ...

    async def close(self) -> None:
        """Release engines, connections and processes. Idempotent."""
        ...


def count_tokens_fallback(text: str) -> int:
    """A tokenizer-free token estimate (about 4 characters a token) for clients without one."""
    return max(1, len(text) // 4) if text else 0


def chat_prompt_ids(
    tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool = True
) -> list[int]:
    """The exact prompt ids an engine feeds for `messages`: the tokenizer's chat template,
    rendered and tokenized in one step, as a plain list (transformers 5 returns a mapping).

    Every engine here renders prompts with this helper, so an episode that builds token-in
    prompts with it gets the same ids the engine would have produced from the messages.
    """
    rendered = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True
    )
    if hasattr(rendered, "keys"):  # BatchEncoding / dict
        rendered = rendered["input_ids"]
    return [int(token) for token in rendered]


def as_judge(client: ModelClient | None, max_tokens: int = 8) -> Any:
    """A reward judge over a model client: `await judge(prompt) -> str`, greedy and short.

    Rewards take a judge as a plain async callable, so they need nothing from this package;
    its failures keep their `infra` attribute (`ModelError.infra` is True), which is how the
    rubric tells an unreachable judge from a wrong answer."""
    if client is None:
        return None

    async def judge(prompt: str) -> str:
        completion = await client.generate(
            [{"role": "user", "content": prompt}], SamplingParams(max_tokens=max_tokens, temperature=0.0)
        )
        return completion.text

    return judge
