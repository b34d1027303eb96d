"""The sandbox's settings, in one frozen model.

Every limit the sandbox enforces is a field here, so an experiment's record can say exactly
what the REPL was allowed to do. The model is frozen (a config shared by a pool and all its
sandboxes cannot drift) and rejects unknown keys (a misspelt limit must fail loudly, not be
silently ignored). Bad values raise pydantic's `ValidationError`, which names the field.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SandboxConfig(BaseModel):
    """How one REPL worker is isolated and limited (see the threat model in `rlm_env.sandbox`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["auto", "bwrap", "rlimit"] = "auto"
    """Isolation backend. "bwrap": namespaces + read-only binds + seccomp + unprivileged uid +
    rlimits. "rlimit": a plain child process with rlimits only (guarantees little; for machines
    without bubblewrap). "auto": bwrap when it is installed and works, else rlimit (with a
    warning on `Sandbox.mode_warning`). Asking for "bwrap" where it is missing is an error."""

    cell_timeout_s: float = Field(default=60.0, gt=0)
    """Wall-clock seconds one cell may run before the worker raises a timeout inside it. Time
    the worker spends blocked on the host (sub-calls) does not count."""

    kill_grace_s: float = Field(default=5.0, gt=0)
    """Extra seconds the host waits after `cell_timeout_s` before it kills and restarts a
    worker that did not answer (timeout swallowed, stuck in C code)."""

    startup_timeout_s: float = Field(default=20.0, gt=0)
    """Seconds a fresh worker has to say hello and load its context before start fails."""

    max_output_chars: int = Field(default=20_000, ge=200)
    """Most characters of one cell's output shown; the middle of longer output is cut and
    replaced by a marker naming how many characters were cut."""

    memory_limit_mb: int = Field(default=2048, ge=64)
    """RLIMIT_AS of the worker, in MiB (address space, so threads' stacks count too)."""

    cpu_time_limit_s: int = Field(default=1800, gt=0)
    """RLIMIT_CPU of the worker over its whole life, in CPU seconds (SIGXCPU then restart)."""

    max_processes: int = Field(default=64, gt=0)
    """RLIMIT_NPROC: tasks (threads included) the worker's uid may have. Only enforced when
    the worker runs as a non-root uid (bwrap mode gives each sandbox its own uid)."""

    max_open_files: int = Field(default=256, ge=32)
    """RLIMIT_NOFILE of the worker."""

    max_file_size_mb: int = Field(default=64, gt=0)
    """RLIMIT_FSIZE: largest file the worker may write, in MiB."""

    tmp_size_mb: int = Field(default=128, gt=0)
    """Size of the private tmpfs mounted on /tmp in bwrap mode (it lives in host memory)."""

    io_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds one host write to the worker may wait for the worker to read (a worker that
    floods `call` frames and never reads the replies is a protocol violation after this)."""

    max_batch_prompts: int = Field(default=65_536, gt=0)
    """Most prompts one `llm_batch` frame may carry; more is refused before the handler sees
    it (and before the handler's own budget check, see calls.serve_call)."""

    memory_cgroup: Literal["auto", "required", "off"] = "auto"
    """A memory cgroup per sandbox (bwrap mode, root host): bounds all the memory the sandbox
    causes, including what RLIMIT_AS cannot see (its /tmp, kernel objects such as inodes, pipes,
    socket buffers). "auto": use it where the host may create cgroups, else run without and say
    so in `Sandbox.mode_warning`; "required": refuse to start without it; "off": never."""

    cgroup_headroom_mb: int = Field(default=96, ge=16)
    """The cgroup's limit is `memory_limit_mb + tmp_size_mb + cgroup_headroom_mb` (the headroom
    is for kernel objects, page tables and buffers)."""

    prefix_chars: int = Field(default=500, ge=0)
    """Characters of the context shown as its prefix in the metadata (`PreparedContext.prefix`)."""

    answer_max_bytes: int = Field(default=1_000_000, gt=0)
    """Largest serialized answer (JSON or str) accepted from FINAL / FINAL_VAR / `answer`."""

    extra_ro_binds: tuple[str, ...] = ()
    """Further host paths bound read-only at the same path inside the sandbox (bwrap mode)."""

    allow_site_packages: bool = True
    """Bind the host environment's site-packages read-only so numpy, regex etc. import."""

    seccomp: bool = True
    """Install the syscall filter (no fork, exec, ptrace, inet sockets, mounts...) in bwrap mode."""

    drop_privileges: bool = True
    """When the host runs as root, run user code as a fresh unprivileged uid (bwrap mode)."""

    pythonhashseed: int = Field(default=0, ge=0, le=4294967295)
    """PYTHONHASHSEED of the worker, so set iteration order is reproducible across episodes."""

    @field_validator("extra_ro_binds")
    @classmethod
    def _absolute_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for p in paths:
            if not os.path.isabs(p):
                raise ValueError(f"extra_ro_binds entries must be absolute paths, got {p!r}")
            if os.path.normpath(p) == "/":
                raise ValueError("extra_ro_binds may not bind the whole root filesystem")
        return paths
