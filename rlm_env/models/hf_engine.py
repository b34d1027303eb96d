"""`TransformersClient`: a `ModelClient` on plain `transformers` `model.generate`.

The engine of last resort: no vLLM, no Ray, one model in this process. It exists for machines
that have only torch and transformers (the project's GPU machine has no vLLM), for checking
that a converted checkpoint loads outside vLLM, and for small correctness tests.

It returns the same fields as the vLLM engines: the exact prompt ids (the tokenizer's chat
template, or the ids the caller passed), the sampled ids including a final end token, and the
logprob of each sampled token, read from `output_scores` (the scores after temperature/top-p,
so they are the sampling policy's, like vLLM's "processed_logprobs"). Generation is blocking,
so it runs in a worker thread (`asyncio.to_thread`) behind a lock: one model, one request at
a time, while the event loop stays free.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from .base import Completion, Message, ModelError, PromptTooLong, SamplingParams, chat_prompt_ids
from .checkpoint import weights_identity


def auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersClient:
    """One Hugging Face causal LM, generating one request at a time."""

    supports_token_prompts = True

    def __init__(
        self, model: str, *, device: str | None = None, dtype: str = "bfloat16", name: str | None = None
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = model
        self.name = name or Path(model).name
        self.device = device or auto_device()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        self.weight_version = 0
        self.checkpoint = weights_identity(model)
        self.context_window: int | None = getattr(self.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()  # a thread lock: generation itself runs in worker threads
        self._closed = False

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
        prompt_ids = (
            list(prompt_token_ids)
            if prompt_token_ids is not None
            else chat_prompt_ids(self.tokenizer, messages)
        )
        if self.context_window and len(prompt_ids) + 1 > self.context_window:
            raise PromptTooLong(
                f"{self.name}: prompt of {len(prompt_ids):,} tokens exceeds the model's window of "
                f"{self.context_window:,} tokens",
                prompt_tokens=len(prompt_ids),
                window=self.context_window,
            )
        try:
            result = await asyncio.to_thread(self._generate_locked, prompt_ids, sampling)
        except Exception as exc:  # out of memory, device errors: infrastructure, not the model
            raise ModelError(f"{self.name}: generation failed: {exc!r}") from exc
        result.latency_s = time.perf_counter() - started
        return result

    def _generate_locked(self, prompt_ids: list[int], sampling: SamplingParams) -> Completion:
        with self._lock:
            return self._generate(prompt_ids, sampling)

    def _generation_kwargs(self, sampling: SamplingParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "output_scores": True,
            "return_dict_in_generate": True,
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        return kwargs

    def _generate(self, prompt_ids: list[int], sampling: SamplingParams) -> Completion:
        import torch

        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)  # global RNG: fine under the lock
        inputs = torch.tensor([prompt_ids], device=self.device)
        with torch.inference_mode():
            output = self.model.generate(
                inputs, attention_mask=torch.ones_like(inputs), **self._generation_kwargs(sampling)
            )
        completion_ids = output.sequences[0, len(prompt_ids) :].tolist()
        logprobs = [
            float(torch.log_softmax(step_scores[0].float(), dim=-1)[token])
            for step_scores, token in zip(output.scores, completion_ids, strict=True)
        ]
        text = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
        finish_reason, extras = "length", {}
        eos_ids = self._eos_ids()
        if completion_ids and completion_ids[-1] in eos_ids:
            finish_reason = "stop"
        for stop in sampling.stop:
            if stop in text:
                text, finish_reason = text[: text.index(stop)], "stop"
                extras["stop_reason"] = stop
        return Completion(
            text=text,
            finish_reason=finish_reason,
            prompt_token_ids=list(prompt_ids),
            completion_token_ids=completion_ids,
            logprobs=logprobs,
            model=self.name,
            weight_version=self.weight_version,
            checkpoint=self.checkpoint,
            replica=f"{self.name}@{self.device}",
            extras=extras,
        )

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    async def close(self) -> None:
        self._closed = True
