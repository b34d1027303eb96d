"""Small builders shared by the training tests: synthetic records and a tiny random llama."""

from __future__ import annotations

import shutil
from pathlib import Path

from rlm_env.episode.record import EpisodeRecord, ModelCall, RootSample
from rlm_env.models.base import Completion


def make_record(
    episode_id: str,
    task_id: str,
    reward: float,
    *,
    prompt: int = 4,
    sampled: int = 3,
    infra: bool = False,
    logprobs: bool = True,
    seed: int = 0,
) -> EpisodeRecord:
    """A scored record whose root sample is `prompt` prompt tokens then `sampled` sampled ones."""
    ids = [(seed * 7 + k * 3) % 90 + 5 for k in range(prompt + sampled)]
    sampled_lps = [-0.5 - 0.1 * k for k in range(sampled)] if logprobs else [None] * sampled
    lps = [None] * prompt + sampled_lps
    call = ModelCall(
        id="root-0",
        role="root",
        depth=0,
        prompt_token_ids=ids[:prompt],
        completion_token_ids=ids[prompt:],
        logprobs=sampled_lps if logprobs else None,
        weight_version=0,
    )
    record = EpisodeRecord(
        episode_id=episode_id,
        task={"id": task_id},
        config={},
        calls=[call],
        root_sample=RootSample(
            token_ids=ids, loss_mask=[0] * prompt + [1] * sampled, logprobs=lps, available=True
        ),
        rewards={"reward": reward, "correctness": reward, "mask": 0.0 if infra else 1.0},
    )
    record.flags.infra_failure = infra
    return record


def tiny_llama(vocab_size: int = 128, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def tiny_model_dir(path: Path) -> Path:
    """A randomly initialised tiny llama with the default model's tokenizer, saved to `path`."""
    from rlm_env.models import ensure_default_model

    source = Path(ensure_default_model())
    model = tiny_llama(vocab_size=49152)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (source / name).exists():
            shutil.copy(source / name, path / name)
    return path


class ScriptedTokenPolicy:
    """A scripted root with real token ids from `tokenizer` (ids of the reply + the end token),
    as an engine would return them; replies come from `reply(messages)`. No logprobs."""

    supports_token_prompts = True
    name = "scripted-token-policy"

    def __init__(self, tokenizer, reply):
        self.tokenizer = tokenizer
        self.reply = reply

    async def generate(self, messages, sampling, *, prompt_token_ids=None, session_id=None):
        text = self.reply(messages)
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return Completion(
            text=text,
            finish_reason="stop",
            prompt_token_ids=list(prompt_token_ids) if prompt_token_ids is not None else None,
            completion_token_ids=ids,
            model=self.name,
        )

    async def close(self):
        return None


def tiny_sft_config(tmp_path: Path, records: int, settings: str) -> Path:
    """An SFT config on a tiny random model (`tmp_path/model`) and `records` synthetic records
    (`tmp_path/data.jsonl`); `settings`: more top-level TOML lines. Returns the config's path."""
    from rlm_env.episode import TrajectoryWriter

    model = tiny_model_dir(tmp_path / "model")
    data = tmp_path / "data.jsonl"
    with TrajectoryWriter(data) as w:
        for k in range(records):
            w.write(make_record(f"e{k}", f"t{k}", 1.0, prompt=6, sampled=5 + k, seed=k))
    config = tmp_path / "sft.toml"
    config.write_text(f'mode = "sft"\nmodel = "{model}"\n{settings}\n[sft]\ndata = ["{data}"]\n')
    return config
