"""OpenAI-compatible HTTP client against real servers.

One real vLLM OpenAI server on 127.0.0.1 (started once for the module, ~40 s) checks the
token-ids extension and logprobs (against a float32 recomputation, never the model's wording); a closed port checks refusal handling; and a tiny stdlib
HTTP server that speaks like a plain OpenAI endpoint (no token ids, a 503 first) checks the
fallback and retry paths without an engine.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from rlm_env.models import EngineConfig, ModelError, SamplingParams, chat_prompt_ids
from rlm_env.models.logprob_check import sequence_logprobs
from rlm_env.models.openai_http import OpenAIChatClient
from rlm_env.models.openai_server import free_port, launch_vllm_server
from tests.engine_checks import (
    assert_finish_consistent,
    assert_ids_decode_to_text,
    assert_logprobs_agree,
    assert_sampled_logprobs_agree,
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def vllm_server(default_model_path):
    config = EngineConfig(max_model_len=4096, kvcache_gb=0.5)
    with launch_vllm_server(str(default_model_path), served_model_name="smol", config=config) as server:
        print(f"\n[vllm_server] healthy after {server.start_seconds:.1f} s")
        yield server


@pytest.mark.engine
@pytest.mark.slow
async def test_vllm_server_returns_token_ids_and_logprobs(vllm_server, default_model_path, reference_model):
    """No assertion on the wording (bf16 near-ties flip it between CPUs): ids, determinism, and
    the server's sampled and prompt logprobs against a float32 recomputation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    eos = {tokenizer.eos_token_id}
    client = OpenAIChatClient(vllm_server.base_url, "smol", timeout_s=60)
    try:
        greedy = SamplingParams(max_tokens=40, temperature=0.0)
        completion = await client.generate(QUESTION, greedy)
        again = await client.generate(QUESTION, greedy)
        assert completion.token_ids_available, completion.extras
        assert completion.prompt_token_ids == chat_prompt_ids(tokenizer, QUESTION)
        assert again.completion_token_ids == completion.completion_token_ids, "greedy is not deterministic"
        assert_ids_decode_to_text(completion, tokenizer)
        assert_finish_consistent(completion, 40, eos)
        assert_sampled_logprobs_agree(completion, reference_model, 1.0, "vLLM server greedy")
        short = await client.generate(QUESTION, SamplingParams(max_tokens=3, temperature=0.7, seed=1))
        assert_finish_consistent(short, 3, eos)
        assert_sampled_logprobs_agree(short, reference_model, 0.7, "vLLM server at temperature 0.7")
        # Prompt logprobs over HTTP (vLLM's `prompt_logprobs` extension of /v1/completions,
        # which takes token ids): the server scores prompt + answer as the learner would.
        sequence = completion.prompt_token_ids + completion.completion_token_ids
        scored = await _server_prompt_logprobs(vllm_server.base_url, sequence)
        assert_logprobs_agree(
            scored, sequence_logprobs(reference_model, sequence), "vLLM server prompt logprobs"
        )
    finally:
        await client.close()


async def _server_prompt_logprobs(base_url: str, token_ids: list[int]) -> list[float | None]:
    body = {"model": "smol", "prompt": token_ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(f"{base_url}/completions", json=body)
    response.raise_for_status()
    positions = response.json()["choices"][0]["prompt_logprobs"]
    assert len(positions) == len(token_ids)
    return [
        None if position is None else float(position[str(token)]["logprob"])
        for token, position in zip(token_ids, positions, strict=True)
    ]


async def test_closed_port_raises_model_error_after_retries():
    client = OpenAIChatClient(f"http://127.0.0.1:{free_port()}", "nothing", max_retries=2, backoff_s=0.01)
    started = time.perf_counter()
    with pytest.raises(ModelError, match="failed after 3 attempts: connection failed"):
        await client.generate(QUESTION, SamplingParams(max_tokens=4))
    assert time.perf_counter() - started < 5
    await client.close()


class _PlainOpenAIHandler(BaseHTTPRequestHandler):
    """Answers like a server without vLLM's extensions; the first POST gets a 503."""

    posts = 0

    def do_POST(self):  # noqa: N802 (stdlib name)
        type(self).posts += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).posts == 1:
            self.send_response(503)
            self.end_headers()
            return
        reply = {
            "model": body["model"],
            "choices": [
                {
                    "message": {"role": "assistant", "content": "Paris."},
                    "finish_reason": "stop",
                    "logprobs": {
                        "content": [{"token": "Paris", "logprob": -0.1}, {"token": ".", "logprob": -0.2}]
                    },
                }
            ],
        }
        payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


async def test_server_without_token_ids_and_a_503_is_retried():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PlainOpenAIHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = OpenAIChatClient(f"http://127.0.0.1:{server.server_port}/v1", "plain", backoff_s=0.01)
    try:
        completion = await client.generate(QUESTION, SamplingParams(max_tokens=4))
    finally:
        await client.close()
        server.shutdown()
    assert completion.text == "Paris."
    assert completion.prompt_token_ids is None and completion.completion_token_ids is None
    assert completion.extras["token_ids_missing"] == "server did not return token ids"
    assert completion.logprobs == [-0.1, -0.2]
    assert completion.extras["retries"] == 1
