"""The learner: one small torch + transformers + peft trainer for all three modes.

Why not TRL's trainers (see also the README's Training section): our samples are multi-turn
transcripts whose loss mask interleaves sampled tokens with REPL output, and the GRPO
importance ratio must be taken against the logprobs the *engine* recorded for each sampled
token (TRL's CPU path applies no importance correction from a rollout function's logprobs).
SFT, RFT and GRPO are then the same loop with a different per-token loss, so one learner
serves all three.

`Learner.train_step(items, objective)` is one optimizer step over any number of sequences:
they are sorted by length and cut into micro-batches (padding stays small), each micro-batch's
loss is normalised by the whole step's token or sequence count (`losses.py`), so accumulation
is exact. With `torch.distributed` initialised (Ray Train's workers), each rank takes its slice
of the step and the trainable gradients are all-reduced and averaged before clipping, which
makes 2 workers compute exactly the single-worker gradient.

Precision: master weights are fp32; "bf16_autocast" runs the forward/backward matmuls in bf16;
logprobs and losses are always fp32. `export_weights` writes the merged policy (LoRA deltas
added to the base weights, nothing mutated) as one `model.safetensors` for the engines.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import torch

from training.config import TrainConfig
from training.data import TrainItem
from training.losses import grpo_loss, sft_loss, shift_for_targets, token_logprobs

Objective = Literal["sft", "grpo"]


def load_policy(model_path: str, config: TrainConfig) -> tuple[Any, Any]:
    """(model, tokenizer): fp32 master weights, LoRA-wrapped when the adapter says so."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return wrap_adapter(model, config), tokenizer


def wrap_adapter(model: Any, config: TrainConfig) -> Any:
    if config.init_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    elif config.adapter.kind == "lora":
        from peft import LoraConfig, get_peft_model

        a = config.adapter
        lora = LoraConfig(
            r=a.r,
            lora_alpha=a.alpha,
            lora_dropout=a.dropout,
            target_modules=list(a.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # non-reentrant: works with frozen embeddings (LoRA) without forcing input grads
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


class Learner:
    def __init__(self, model: Any, config: TrainConfig, tokenizer: Any = None):
        torch.manual_seed(config.seed)
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.config = config
        self.is_lora = config.adapter.kind == "lora"
        self.pad_id = 0 if tokenizer is None or tokenizer.pad_token_id is None else tokenizer.pad_token_id
        self.params = [p for p in model.parameters() if p.requires_grad]
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        warm = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.step = 0
        self.reference = None  # a frozen copy for KL under full fine-tuning (built on demand)

    @classmethod
    def from_config(cls, model_path: str, config: TrainConfig) -> Learner:
        torch.manual_seed(config.seed)
        model, tokenizer = load_policy(model_path, config)
        return cls(model, config, tokenizer)

    # ---- batching -------------------------------------------------------------------------
    def _autocast(self):
        if self.config.precision == "bf16_autocast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def collate(self, items: list[TrainItem]) -> dict[str, torch.Tensor]:
        width = max(len(i.token_ids) for i in items)
        n = len(items)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        sampled = torch.zeros((n, width), dtype=torch.float32)
        for row, item in enumerate(items):
            k = len(item.token_ids)
            ids[row, :k] = torch.tensor(item.token_ids)
            attention[row, :k] = 1
            mask[row, :k] = torch.tensor(item.loss_mask)
            sampled[row, :k] = torch.tensor([lp if lp is not None else 0.0 for lp in item.logprobs])
        batch = {
            "input_ids": ids,
            "attention_mask": attention,
            "loss_mask": mask,
            "sampled_logprobs": sampled,
            "advantages": torch.tensor([i.advantage for i in items], dtype=torch.float32),
            "has_logprobs": torch.tensor([i.has_logprobs for i in items], dtype=torch.bool),
            "temperature": torch.tensor([i.temperature for i in items], dtype=torch.float32),
        }
        return {k: v.to(self.device) for k, v in batch.items()}

    def micro_batches(self, items: list[TrainItem]) -> list[list[TrainItem]]:
        ordered = sorted(items, key=lambda i: len(i.token_ids))
        size = self.config.micro_batch
        return [ordered[k : k + size] for k in range(0, len(ordered), size)]

    # ---- forward --------------------------------------------------------------------------
    def logprobs(self, batch: dict[str, torch.Tensor], *, reference: bool = False) -> torch.Tensor:
        """Per-target-token logprobs [B, T-1] under the policy (or the frozen reference) at the
        positions whose target is trained (`loss_mask` 1); 0 at every other position, which
        every loss multiplies by a zero weight.

        The output head (49k x 576 on the default model) runs only on those positions: a
        transcript's trained tokens are 35-45% of it (the rest is prompt, REPL output and chat
        template), and the head's fp32 logits, their temperature-scaled copy and softmax were
        the largest activations of a step (~1 MB a token)."""
        model = self.model
        ctx: Any = contextlib.nullcontext()
        if reference:
            if self.is_lora:
                ctx = self.model.disable_adapter()
            else:
                model = self._reference_model()
        targets = batch["input_ids"][:, 1:]
        keep = batch["loss_mask"][:, 1:].bool()
        temperature = batch["temperature"].view(-1, 1).expand_as(targets)[keep]
        with ctx:
            hidden, head = self.forward_hidden(model, batch["input_ids"], batch["attention_mask"])
            if head is None:  # not a *ForCausalLM with .model/.lm_head: full logits, then select
                logits = hidden[:, :-1][keep]
            else:
                logits = head(hidden[:, :-1][keep].float())
        values = token_logprobs(logits.unsqueeze(1), targets[keep].unsqueeze(1), temperature)
        rows, cols = keep.nonzero(as_tuple=True)
        zeros = torch.zeros(targets.shape, dtype=values.dtype, device=values.device)
        return zeros.index_put((rows, cols), values.view(-1))

    def forward_hidden(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        """(the decoder's last hidden states, the output head), the decoder under the configured
        precision; the head is left to the caller, to run in fp32 on the positions it needs:
        bf16 logits carry ~3 significant digits (+-0.06 at a logit of 20), too coarse for an
        importance ratio against the engine's logprobs; the head is ~20% of the FLOPs. A model
        without `.model`/`.lm_head` returns its fp32 logits and None."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder, head = getattr(base, "model", None), getattr(base, "lm_head", None)
        if decoder is None or head is None:
            with self._autocast():
                return model(input_ids=input_ids, attention_mask=attention_mask).logits.float(), None
        with self._autocast():
            hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, head

    def _reference_model(self) -> Any:
        if self.reference is None:
            import copy

            self.reference = copy.deepcopy(self.model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        return self.reference

    # ---- one optimizer step ---------------------------------------------------------------
    def train_step(self, items: list[TrainItem], objective: Objective) -> dict[str, float]:
        """One optimizer step over `items` (this rank's slice under torch.distributed)."""
        started = time.perf_counter()
        world, rank = _world()
        grpo = self.config.grpo
        normalization = grpo.normalization if objective == "grpo" else "token"
        # The normaliser covers the whole step (all ranks): exact accumulation and averaging.
        normalizer = (
            float(sum(i.num_loss_tokens for i in items)) if normalization == "token" else float(len(items))
        )
        mine = items[rank::world] if world > 1 else items
        totals = {"loss": 0.0, "loss_tokens": 0.0, "clipped": 0.0, "ratio": 0.0, "kl": 0.0, "tokens": 0.0}
        self.model.train()
        for chunk in self.micro_batches(mine):
            batch = self.collate(chunk)
            logp = self.logprobs(batch)
            _, mask, sampled = shift_for_targets(
                batch["input_ids"], batch["loss_mask"], batch["sampled_logprobs"]
            )
            if objective == "sft":
                loss = sft_loss(logp, mask, normalization, max(normalizer, 1.0))
                totals["loss_tokens"] += float(mask.sum())
            else:
                ref = None
                if grpo.kl_coef > 0:
                    with torch.no_grad():
                        ref = self.logprobs(batch, reference=True)
                loss, st = grpo_loss(
                    logp,
                    sampled,
                    batch["advantages"],
                    mask,
                    clip_low=grpo.clip_eps,
                    clip_high=grpo.clip_eps_high if grpo.clip_eps_high is not None else grpo.clip_eps,
                    normalization=normalization,
                    normalizer=max(normalizer, 1.0),
                    logp_ref=ref,
                    kl_coef=grpo.kl_coef,
                    has_logprobs=batch["has_logprobs"],
                )
                totals["loss_tokens"] += st.loss_tokens
                totals["clipped"] += st.clipped_tokens
                totals["ratio"] += st.ratio_sum
                totals["kl"] += st.kl_sum
            if world > 1:
                loss = loss * world  # all-reduce averages; the normaliser already spans all ranks
            loss.backward()
            totals["loss"] += float(loss.detach()) / world  # this rank's share of the step's loss
            totals["tokens"] += float(batch["attention_mask"].sum())
        sequences = float(len(mine))
        if world > 1:  # the step's figures over all ranks, not rank 0's slice
            import torch.distributed as dist

            keys = sorted(totals)
            summed = torch.tensor([totals[k] for k in keys] + [sequences], dtype=torch.float64)
            dist.all_reduce(summed, op=dist.ReduceOp.SUM)
            totals = dict(zip(keys, summed[:-1].tolist(), strict=True))
            sequences = float(summed[-1])
            for p in self.params:  # a rank with no loss tokens still joins every all-reduce
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            _all_reduce_mean([p.grad for p in self.params])
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        seconds = time.perf_counter() - started
        n_tok = max(totals["loss_tokens"], 1.0)
        metrics = {
            "loss": totals["loss"],
            "grad_norm": grad_norm if math.isfinite(grad_norm) else float("nan"),
            "lr": lr,
            "sequences": sequences,
            "tokens": totals["tokens"],
            "loss_tokens": totals["loss_tokens"],
            "learner_s": seconds,
            "tokens_per_s": totals["tokens"] / seconds if seconds > 0 else 0.0,
        }
        if objective == "grpo":
            metrics.update(
                clip_fraction=totals["clipped"] / n_tok,
                ratio_mean=totals["ratio"] / n_tok,
                kl=totals["kl"] / n_tok,
            )
        return metrics

    # ---- weights for the engines ----------------------------------------------------------
    def merged_state_dict(self, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
        """The policy's full weights (LoRA deltas added; nothing mutated), HF names, `dtype`."""
        model = self.model
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            if self.is_lora:
                deltas = {}
                for name, module in model.named_modules():
                    if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
                        deltas[_hf_name(name) + ".weight"] = module.get_delta_weight("default")
                for name, tensor in model.state_dict().items():
                    if "lora_" in name:
                        continue
                    key = _hf_name(name)
                    value = tensor + deltas[key] if key in deltas else tensor
                    out[key] = value.to(dtype).cpu().contiguous()
            else:
                out = {k: v.to(dtype).cpu().contiguous() for k, v in model.state_dict().items()}
        base_config = getattr(model, "config", None)
        if getattr(base_config, "tie_word_embeddings", False):
            out.pop("lm_head.weight", None)  # tied to embed_tokens; safetensors refuses shared memory
        return out

    def export_weights(self, directory: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
        """Write the merged policy as `model.safetensors` (+ config.json) for `reload_weights`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "model.safetensors.tmp"
        save_file(self.merged_state_dict(dtype), str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / "model.safetensors")
        base = self.model.get_base_model() if self.is_lora else self.model
        base.config.to_json_file(str(directory / "config.json"))
        return directory

    def save_adapter(self, directory: str | Path) -> Path:
        """The trained policy in a form `rlm-env eval --adapter` and `init_adapter` read: a peft
        LoRA adapter (adapter_config.json + adapter_model.safetensors), or for full fine-tuning
        a complete HF checkpoint with the tokenizer. Written beside, then renamed into place."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp))
        if self.tokenizer is not None and not self.is_lora:
            self.tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
        return directory

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, directory: str | Path, meta: dict[str, Any]) -> None:
        """Trainable weights, optimizer and scheduler state, and `meta` (step, counters), written
        to a temporary folder and renamed into place, so a kill never leaves half a checkpoint."""
        from safetensors.torch import save_file

        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        trainable = {
            n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad
        }
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state(),
            },
            tmp / "optimizer.pt",
        )
        (tmp / "meta.json").write_text(json.dumps({**meta, "learner_step": self.step}, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)

    def load_checkpoint(self, directory: str | Path) -> dict[str, Any]:
        from safetensors.torch import load_file

        directory = Path(directory)
        weights = load_file(str(directory / "trainable.safetensors"))
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        state = torch.load(directory / "optimizer.pt", weights_only=False, map_location=self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        meta = json.loads((directory / "meta.json").read_text())
        self.step = int(meta.get("learner_step", 0))
        return meta


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _hf_name(peft_name: str) -> str:
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer", "")


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _all_reduce_mean(grads: list[torch.Tensor]) -> None:
    import torch.distributed as dist

    world = dist.get_world_size()
    for g in grads:
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        g.div_(world)
