"""The REPL sandbox: where model-written code runs. Threat model first.

The adversary is the code a policy writes into ```repl blocks: assume it is trying to escape,
whether by accident (RL finds every hole) or by design. What it may harm is its own episode;
what it must not harm is the host (the trainer, the engines, other episodes, the machine).

WHAT THE SANDBOX GUARANTEES (bwrap mode, x86_64 Linux, host running as root), each claim proven
by the tests named after it in tests/test_escape_*.py (and tests/test_sandbox_pool.py):

1. Host files are out of sight. The worker's root is an empty tmpfs holding, read-only, only the
   interpreter's lib/ tree and executable (under /opt/rlm/python), the environment's
   site-packages (/opt/rlm/site-packages, if `allow_site_packages`), /usr/lib(64) and the loader
   cache. No /etc files, /root, /home, /work, /usr/bin, /bin, the project or the context store.
   [test_cannot_read_host_files, test_cannot_read_a_planted_secret,
   test_home_and_work_dirs_are_absent, test_host_mounts_are_invisible]
2. Nothing is writable but a private, size-capped /tmp (one per sandbox), and no file may exceed
   `max_file_size_mb`. [test_cannot_write_outside_tmp, test_tmp_is_private_per_sandbox,
   test_tmp_and_file_sizes_are_bounded]
3. The context is read-only and private. The worker receives one O_RDONLY descriptor per input
   (a task with several has context_0 ... context_N), never a path or a directory, reads it (or maps it copy-on-write) and closes it; the shared
   content-addressed file cannot be changed, not even by writing into the `context` str that
   shares its pages (of any width: 1, 2 or 4 bytes a character), and another episode's context
   cannot be found. Symlinks in a ContextDir are never followed.
   [test_context_file_cannot_be_modified, test_cannot_find_another_episodes_context,
   test_writing_into_a_shared_context_str_stays_private, test_symlinks_in_a_context_dir_are_not_followed]
   The mapped str is trusted to be what the host wrote (its width and ASCII flag come from the
   host, which decoded the text); what the worker checks is its own interpreter: the str layout
   is probed on a fresh string of the same kind (length, hash, characters, no unknown cached
   pointers) before the file is trusted as one, and any mismatch means a private decode instead
   (`Sandbox.layers["context_shared"]` is then False).
4. No network: a fresh network namespace (its loopback is down, abstract Unix sockets are per
   namespace), and seccomp refuses every socket family but AF_UNIX. [test_no_tcp_to_a_host_listener
   (with and without seccomp), test_no_dns_and_no_inet6, test_no_abstract_unix_socket_to_the_host]
5. No programs and no processes: seccomp refuses execve/execveat, fork, vfork and clone without
   CLONE_THREAD; threads (and, without seccomp, processes) are capped by RLIMIT_NPROC, which
   the kernel enforces because each sandbox runs as a uid of its own (it does not for root).
   [test_cannot_start_programs, test_huge_argv_exec_is_harmless, test_thread_bomb_is_bounded,
   test_fork_bomb_is_bounded_even_without_seccomp]
6. No privileges: user code runs as that unprivileged uid with no capabilities, no_new_privs, and
   mount/unshare/setns/chroot/pivot_root, ptrace, bpf, keyctl, io_uring, open_by_handle_at,
   perf_event_open, module and kexec calls refused by seccomp. [test_no_privileges_left,
   test_ctypes_syscalls_are_denied, test_ptrace_fails]
7. Host processes are out of reach: a pid namespace hides them (/proc shows only the sandbox's
   own init, bwrap's, and the worker), so they cannot be signalled or traced.
   [test_host_pids_are_invisible_in_proc, test_cannot_signal_host_processes]
8. Resources are bounded: address space (RLIMIT_AS), CPU seconds (RLIMIT_CPU), wall time per cell
   (an in-worker timer, then a host deadline that kills), open files, file size, /tmp size, the
   captured output (head + tail in the worker, re-cut on the host), and fd 1/2 (drained into a
   64 KiB ring). Memory no rlimit sees is refused or bounded: memfd_create, SysV shared memory,
   semaphores and message queues and POSIX message queues are refused by seccomp, /dev/shm is
   read-only, and (where the host may create cgroups; `Sandbox.mode_warning` says when not) each
   sandbox is in a memory cgroup of its own (RLIMIT_AS + /tmp + headroom) that charges its /tmp,
   the kernel objects it creates (inodes, dentries, pipes) and page tables, and whose OOM kill
   ends only the worker (`CellResult.oom_killed`). Machine-wide tables are out of reach: the AIO
   table (io_setup & co.) and io_uring are refused, and there are no pseudo-terminals.
   [test_memory_bomb_is_contained, test_cpu_time_limit_kills_a_spinning_worker,
   test_infinite_loop_is_stopped, test_disabling_the_timer_only_earns_a_restart,
   test_fd_exhaustion_is_bounded, test_flooding_stdout_is_bounded, test_tmp_and_file_sizes_are_bounded,
   test_memory_and_table_syscalls_are_denied, test_python_level_memory_and_pty_attacks_fail,
   test_many_empty_files_in_tmp_are_bounded_by_the_cgroup]
9. The host reads only JSON, and only as much as it must. Frames are length-prefixed JSON under a
   64 MiB cap; a reply frame is held to its own, smaller cap by the op it begins with, and every
   frame to a bound on its JSON items (raw `,` `[` `{`: the honest worker escapes them in
   strings), checked chunk by chunk before anything is parsed, so what one frame makes the host
   build is bounded (600,000 items, ~60 MB, besides its strings; frames.py). Frames are parsed with json.loads and nothing
   else, then every field of every frame is checked (strict types, finite bounded numbers,
   bounded strings, no unknown keys); answers and looked-up values are held to
   `answer_max_bytes` on the host. Anything else is a `SandboxProtocolError`: the worker is
   killed and restarted and the cell says so (`CellResult.protocol_violation`), charged to the
   model's code, never an infrastructure failure. Sub-calls reach a model only through the
   host's handler, which sees every request, forged ones included, after host-side argument
   checks; an `llm_batch` over `max_batch_prompts`, or over what the handler's optional
   `sub_calls_left()` allows, is refused on its count before any prompt is looked at.
   [test_forged_call_frames_only_reach_the_handler, test_garbage_frames_are_protocol_violations,
   test_pickle_and_marshal_payloads_are_never_loaded, test_exploding_answer_object,
   test_forged_result_fields_are_protocol_violations, test_a_forged_lookup_cannot_pass_the_answer_cap,
   test_a_64_mb_frame_of_empty_objects_does_not_balloon_the_host,
   test_huge_llm_batch_frames_do_not_stall_a_bystander, test_batches_over_the_limits_are_refused_before_the_handler]
   Async sub-calls (`await llm_query_async(...)`) travel as the same `call` frames: a forged id
   (negative, huge, not an int) is a violation, calls sent out of id order are each answered
   under their own id, and host-only ops (`bind`, `call_result`) sent by the worker are
   violations. [tests/test_contexts_sandbox.py: test_forged_async_call_frames_with_hostile_ids_are_violations,
   test_out_of_order_call_ids_are_each_answered_under_their_own_id,
   test_host_side_ops_sent_by_the_worker_are_violations]
10. No host secrets in the environment (it is rebuilt from scratch, without PATH), and /dev holds
   only null, zero, full, random, urandom, tty, shm (not writable), an empty read-only pts (so
   /dev/ptmx leads nowhere) and the fd links. [test_environment_is_scrubbed, test_dev_is_minimal]
11. Nothing survives `close()`, nor a crash of the host, even a worker spinning in C with the GIL
   held: bwrap's init is the init of the pid namespace and the worker its child. `close()` kills
   that init (by pidfd: the kernel then kills everything inside), then bwrap's process group,
   then anything left under the sandbox's uid or in its cgroup, and removes the cgroup. When the
   host dies, the kernel alone does it: bwrap's parent-death signal kills bwrap, bwrap's death
   kills its init (same uid), and the namespace goes with it; no code in the worker needs to run.
   A dead host's empty cgroups are swept by the next host. [test_nothing_survives_close,
   test_a_crashed_host_leaves_nothing_behind, test_a_worker_spinning_in_c_dies_with_its_host,
   test_close_leaves_no_process]
12. Whatever the code does, the host gets a `CellResult` and goes on, and every host-side wait on
   a worker has a deadline: start-up and context load (`startup_timeout_s`), each write
   (`io_timeout_s`: a worker that stops reading is a protocol violation), each reply (`cell_timeout_s + kill_grace_s`, sub-call time excepted), and the
   waits of a kill. Sub-call requests are bounded too: more than 8 call frames in a row sent
   while a reply is still unread (the stubs never do that; a flood does) is a violation.
   [test_flooding_call_frames_without_reading_replies_is_a_violation,
   test_a_worker_that_stops_reading_a_big_reply_is_a_violation] Crashes, timeouts and violations become a restart on the same context,
   flagged in the result. Episodes run by `eval` and `play` also have a hard wall-clock kill
   (`evaluate.run_with_hard_deadline`: the budget's wall clock plus the longest legitimate
   overrun), labelled `wall_clock`, the model's budget. (Every escape test ends by checking the
   host process, a canary process, host forking and a working sandbox; those of
   test_escape_resources.py also the host's event-loop lag, peak memory and process table.)

WHAT IT DOES NOT GUARANTEE

- Kernel bugs: the kernel is shared (this is not a VM). seccomp shrinks the surface; it does not
  remove it.
- Side and covert channels: timing, caches, CPU load, and what /proc and uname tell anyone: the
  kernel version, CPU model, host memory totals, and host path names: of the bound interpreter
  and site-packages (/proc/self/mountinfo) and of its own context file (/proc/self/maps, when it
  is mapped). Names only: none of those paths is reachable. The installed packages are readable
  by design.
- Fair sharing of CPU: there is no CPU quota. A worker may keep a core busy for a whole cell (its
  threads more than one). Memory is bounded per sandbox (8), not shared fairly: many sandboxes
  together may still use the sum of their limits.
- Without a memory cgroup (not root, cgroups not writable: `mode_warning` says so), kernel
  memory a sandbox causes (inodes of many empty files in /tmp, pipe buffers, page tables) is
  bounded only indirectly (RLIMIT_NOFILE, the machine's own limits), not per sandbox. Unix socket
  buffers are not charged to the cgroup either; RLIMIT_NOFILE bounds them.
- The event loop is not preempted: the host's own work per frame (parsing a frame of up to the
  item bound, a 64 MiB read) holds it for milliseconds, and starting a worker forks the host.
- The episode itself: the model's code may break its own REPL, redefine the helpers, forge its
  own results and answers; only its own reward can suffer. Sub-call budgets are the handler's
  job; time spent waiting for sub-calls is not charged to the cell, and a thread waiting on one
  pauses the cell's clock. Threads outlive their cell (bounded by RLIMIT_CPU and NPROC).
- Weaker set-ups, reported on `Sandbox.layers`: as a non-root host user there is no uid of the
  sandbox's own (a user namespace instead; RLIMIT_NPROC is not set); off x86_64 there is no
  seccomp filter.
- rlimit mode (no bubblewrap; `Sandbox.mode_warning` says so) guarantees only 9, 12, a scrubbed
  environment, and of 8 the memory, CPU, open-file, file-size, per-cell time and output bounds:
  the code can read and write what the host user can, use the network and start programs, which
  may outlive `close()` if they leave the session. It is for trusted code and for machines where
  bubblewrap cannot run (tests/test_sandbox_pool.py::test_rlimit_mode_works_and_warns).

Public API: `SandboxConfig`, what a context can be (`ContextValue`: str, list, dict,
`ContextDir`, `ContextFile`), `prepare_context` -> `PreparedContext`, `Sandbox.start(config,
context, handler)` -> `Sandbox` (`run_cell`, `get_answer`, `lookup_variable`, `show_vars`,
`close`), `SandboxPool(config, size)` (`acquire`, `close`), `CellResult`, `AnswerState`,
`SandboxProtocolError` (never raised out of `run_cell`: violations come back as a CellResult).
"""

from rlm_env.sandbox.config import SandboxConfig
from rlm_env.sandbox.context import ContextDir, ContextFile, ContextValue, PreparedContext, prepare_context
from rlm_env.sandbox.host import AnswerState, CellResult, Handler, Sandbox
from rlm_env.sandbox.launch import SandboxUnavailable
from rlm_env.sandbox.pool import SandboxPool
from rlm_env.sandbox.process import SandboxStartError
from rlm_env.sandbox.protocol import SandboxProtocolError

__all__ = [
    "AnswerState",
    "CellResult",
    "ContextDir",
    "ContextFile",
    "ContextValue",
    "Handler",
    "PreparedContext",
    "Sandbox",
    "SandboxConfig",
    "SandboxPool",
    "SandboxProtocolError",
    "SandboxStartError",
    "SandboxUnavailable",
    "prepare_context",
]
