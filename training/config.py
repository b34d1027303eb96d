"""`TrainConfig`: everything one `rlm-env train` run does, loaded from TOML.

One frozen pydantic model, with a docstring per field (they are the help text), validated when
the file is read: a bad value fails naming the field, e.g. `grpo.group_size: Input should be
greater than 1`. The `[episode]` section is the very `EpisodeConfig` `rlm-env eval` uses, so
rollouts run under exactly the settings an evaluation would; `sub_call_policy` at the top level
overrides the episode's (it decides which engine serves sub-calls and whether they are trained).

What is guaranteed: the resolved config (defaults filled in) is written to the run folder as
`config.json` and a resumed run refuses a config that differs in anything but where and how long
it runs (`steps`, `out`, `workers`, `ray_address`, `sync_dir`, `placement_strategy`,
`learner_cpus`).
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlm_env.episode.config import EpisodeConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class AdapterConfig(_Frozen):
    """LoRA (through peft) or full fine-tuning."""

    kind: Literal["lora", "full"] = "lora"
    """"lora": train low-rank adapters, merged into the weights for each engine sync;
    "full": train every weight."""
    r: int = Field(16, gt=0)
    """LoRA rank."""
    alpha: int = Field(32, gt=0)
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """LoRA dropout (0 keeps the learner's logprobs deterministic, which the ratio needs)."""
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    """Module names that get adapters (all attention and MLP projections of a llama block)."""


class OptimConfig(_Frozen):
    """AdamW and the schedule."""

    lr: float = Field(1e-4, gt=0)
    """Peak learning rate (LoRA likes ~1e-4; full fine-tuning ~1e-5)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradients are clipped to this global norm before each update."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up of the learning rate over this many optimizer steps; constant after."""


class RolloutConfig(_Frozen):
    """Which tasks rollouts run on, and how many at once (rft and grpo)."""

    task: str = "niah"
    """Generated task family (see `rlm_env.tasks`)."""
    lengths: list[str] = ["1k"]
    """Context lengths in tokens; tasks cycle over them."""
    split: str = "train"
    """Split of the family to draw tasks from (train on "train", evaluate on "test")."""
    seed: int = 0
    """Seed of the first task; step n uses seeds seed + n*tasks_per_step + i, so no task repeats."""
    tasks_per_step: int = Field(2, gt=0)
    """Distinct tasks per GRPO step or RFT round."""
    concurrency: int = Field(8, gt=0)
    """Episodes in flight at once."""
    engine: dict[str, Any] = {}
    """`EngineConfig` fields for the vLLM engines (replicas, max_model_len, kvcache_gb, ...)."""
    max_policy_lag: int = Field(0, ge=0)
    """Bounded off-policy lag (rft, grpo). 0: synchronous, each step's episodes are sampled by the
    weights the learner then updates. k > 0: the rollouts of steps n+1..n+k run while the learner
    trains step n (on the same engines, which are reloaded as each step finishes), and an episode
    sampled more than k steps behind the learner's weights is dropped and counted
    (`data/stale_dropped`; see `training/lag.py`). The GRPO ratio uses the recorded sampling
    logprobs either way."""


class SFTConfig(_Frozen):
    """Where supervised data comes from (mode "sft")."""

    data: list[str] = []
    """Trajectory files (JSONL written by `rlm-env eval`, or a run's records); relative paths are
    relative to the working directory."""
    demos: int = Field(0, ge=0)
    """Scripted demonstrations to generate through the real episode loop (with the model's own
    tokenizer, on the rollout task family); 0 for none. Only "niah" has a scripted solver."""
    epochs: int = Field(1, gt=0)
    """Passes over the data; `steps` caps the total optimizer steps."""
    only_correct: bool = True
    """Keep only records whose `correctness` reward is 1 (demonstrations should be right)."""


class RFTConfig(_Frozen):
    """Rejection-sampling fine-tuning (mode "rft"): sample, filter, fine-tune, reload, repeat."""

    samples_per_task: int = Field(4, gt=0)
    """K episodes sampled per task each round."""
    reward_threshold: float = 1.0
    """An episode is kept when its reward is at least this."""
    require_confirmed: bool = True
    """Keep only answers set by executed code (FINAL in a ```repl block)."""
    dedup_by_code: bool = True
    """Keep one episode per distinct sequence of executed cells within a task."""
    epochs_per_round: int = Field(1, gt=0)
    """Passes over each round's kept episodes."""


class GRPOConfig(_Frozen):
    """Group-relative policy optimisation (mode "grpo")."""

    group_size: int = Field(4, gt=1)
    """G episodes per task, all on the same task (same seed, same context)."""
    clip_eps: float = Field(0.2, gt=0)
    """PPO clip range below 1: the ratio is clipped to [1 - clip_eps, 1 + clip_eps_high]."""
    clip_eps_high: float | None = None
    """Upper clip range (DAPO's clip-higher); None: the same as clip_eps."""
    kl_coef: float = Field(0.0, ge=0)
    """Weight of the k3 KL estimate to a frozen reference (for LoRA: the base model with the
    adapters disabled, so it costs no extra memory); 0 skips the reference forward."""
    std_normalize: bool = False
    """Divide advantages by the group's reward std (GRPO) or not (Dr. GRPO's choice)."""
    normalization: Literal["token", "sequence"] = "token"
    """"token": sum of per-token losses over the step's loss tokens (long answers weigh by
    length; DAPO); "sequence": mean per sequence, then mean over sequences (GRPO's original)."""
    inner_steps: int = Field(1, gt=0)
    """Optimizer steps on each rollout batch (1 = strictly on-policy up to engine numerics)."""


class TrainConfig(_Frozen):
    """One training run (see the module docstring)."""

    mode: Literal["sft", "rft", "grpo"]
    """"sft": fine-tune on records; "rft": rejection-sampling SFT rounds; "grpo": group RL."""
    model: str = "default"
    """The policy: "default" (the embedded SmolLM2-135M-Instruct) or a local HF checkpoint."""
    run_name: str | None = None
    """Name used in checkpoint ids ("<run_name>/step-3"); None: the out folder's name."""
    out: str = "runs/train"
    """Run folder: config, checkpoints, TensorBoard logs, records, reward curve. An existing
    run folder is resumed from its last checkpoint."""
    seed: int = 0
    """Seeds torch (LoRA init, dropout) and the data order."""
    steps: int = Field(4, gt=0)
    """Optimizer steps (sft), rounds (rft) or rollout steps (grpo)."""
    adapter: AdapterConfig = AdapterConfig()
    """LoRA or full fine-tuning."""
    init_adapter: str | None = None
    """A LoRA adapter folder (peft format, e.g. an earlier stage's `<out>/adapter`) to continue
    training from instead of fresh adapters, so stages chain (SFT -> RFT -> GRPO) into one adapter
    on the unchanged base. LoRA only; its rank and target modules replace `adapter`'s."""
    optim: OptimConfig = OptimConfig()
    """Optimizer and schedule."""
    micro_batch: int = Field(2, gt=0)
    """Sequences per forward/backward pass (sorted by length, so padding stays small)."""
    batch_size: int = Field(4, gt=0)
    """Sequences per optimizer step in sft/rft (grpo: a step is all of one rollout batch);
    accumulated over micro-batches."""
    max_seq_len: int = Field(2048, gt=0)
    """Longer samples are dropped (counted), never truncated: a cut transcript is not what
    was sampled."""
    precision: Literal["fp32", "bf16_autocast"] = "fp32"
    """Master weights stay fp32; "bf16_autocast" runs the decoder's matmuls in bf16 (the output
    head, logprobs and losses stay fp32). fp32 is the default: bf16 autocast ran 2.03x faster on
    this 2-core AMD machine but lowered the SFT loss about half as much per step on the same
    batch (2.085 -> 2.023 vs 1.957 in 5 LoRA steps; README, "Measured here"), so per second the
    two come out even and fp32 keeps the logprobs closest to the engine's. Measure again on GPUs
    and AMX CPUs, where the speed gap is larger."""
    gradient_checkpointing: bool = True
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (transformers' non-reentrant checkpointing). Same loss and gradients (a unit test compares
    them). On by default because it costs almost no time here: one SFT step of the default
    model on 2 transcripts of 1,400 tokens, micro_batch 2, grew the process by 2.5 GB instead of
    6.7 GB, in 23.3 s instead of 23.8 s (`python -m training.bench_memory`, BENCHMARKS.md figure
    14); the engines share this machine's RAM. Off: a little faster where memory is plentiful."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the learner runs: "auto" takes CUDA when torch sees a GPU, else the CPU."""
    workers: int = Field(1, gt=0)
    """Data-parallel learner workers; more than 1 runs the learner on Ray Train (gloo on CPU)."""
    ray_address: str | None = None
    """Attach to an existing Ray cluster ("auto", "HOST:6379" or "ray://host:10001"); None starts
    a local one. Also `rlm-env train --ray-address`."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK"] = "PACK"
    """How Ray places the engine replicas (one placement-group bundle each) and the learner
    workers (one bundle each, through Ray Train's ScalingConfig): "PACK" fills nodes in turn
    where it can, "SPREAD" puts bundles on different nodes where it can, "STRICT_PACK" requires
    one node for the whole group."""
    learner_cpus: float = Field(1.0, gt=0)
    """CPUs Ray reserves for each learner worker when `workers > 1` (a bookkeeping figure: on a
    small machine use a fraction, so the engine replicas still fit)."""
    sync_dir: str = "/dev/shm/rlm-train"
    """Where merged weights are written for the engines to reload (a RAM disk on Linux)."""
    keep_checkpoints: int = Field(2, gt=0)
    """Checkpoints kept in the run folder (older ones are deleted)."""
    sub_call_policy: Literal["frozen", "live_untrained", "trained"] = "live_untrained"
    """"frozen": sub-calls go to a separate engine that is never reloaded; "live_untrained": the
    live policy answers them but they are not trained; "trained": the live policy answers them
    and each sub-call is a training sample carrying its episode's advantage."""
    rubric: dict[str, Any] = {}
    """`RubricConfig` fields (weights, cost coefficients)."""
    rollout: RolloutConfig = RolloutConfig()
    """Rollout tasks and concurrency (rft, grpo; sft demos)."""
    episode: EpisodeConfig = EpisodeConfig()
    """The episode settings of every rollout (the same section `rlm-env eval` reads)."""
    sft: SFTConfig = SFTConfig()
    """Data for mode "sft"."""
    rft: RFTConfig = RFTConfig()
    """Settings of mode "rft"."""
    grpo: GRPOConfig = GRPOConfig()
    """Settings of mode "grpo"."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.mode == "sft" and not self.sft.data and not self.sft.demos:
            raise ValueError("mode 'sft' needs sft.data (record files) or sft.demos > 0")
        if self.init_adapter is not None and self.adapter.kind != "lora":
            raise ValueError("init_adapter continues a LoRA adapter; it needs adapter.kind = 'lora'")
        if self.micro_batch > self.batch_size and self.mode != "grpo":
            raise ValueError("micro_batch must not exceed batch_size")
        return self

    @property
    def name(self) -> str:
        return self.run_name or Path(self.out).name

    def resolved_episode(self) -> EpisodeConfig:
        """The episode config rollouts run under, with this run's sub_call_policy."""
        return self.episode.model_copy(update={"sub_call_policy": self.sub_call_policy})


def load_train_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, data: dict | None = None
) -> TrainConfig:
    """Read a TrainConfig from TOML (or take `data`), then apply dotted overrides such as
    {"grpo.group_size": 2}. Errors name the field and the file."""
    raw: dict[str, Any] = copy.deepcopy(data) if data is not None else {}
    if path is not None:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"{path or 'train config'}: bad config:\n{e}") from None
