"""Scale: 1M-token contexts in seconds, without several copies in memory (slow)."""

from __future__ import annotations

import time

import pytest

from rlm_env.tasks import get_family
from rlm_env.tasks.base import ContextFile

KNOBS = {"codeqa": {}, "multihop": {}, "niah": {}, "oolong": {}, "oolong_pairs": {}}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(KNOBS))
def test_one_million_tokens(tmp_path, family):
    start = time.perf_counter()
    task = get_family(family).generate(0, 1_000_000, "test", out_dir=str(tmp_path), **KNOBS[family])
    elapsed = time.perf_counter() - start
    m = task.metadata
    print(f"\n{family}: 1M tokens in {elapsed:.2f} s ({m['length_tokens']:,} tokens, {m['length_measure']})")
    assert abs(m["length_tokens"] - 1_000_000) / 1_000_000 < 0.1
    assert elapsed < 60


@pytest.mark.slow
def test_file_output_streams(tmp_path):
    """Above the threshold the text goes straight to a file (3M tokens of S-NIAH)."""
    start = time.perf_counter()
    task = get_family("niah").generate(1, 3_000_000, "train", out_dir=str(tmp_path))
    elapsed = time.perf_counter() - start
    print(f"\nniah: 3M tokens to a file in {elapsed:.2f} s")
    assert isinstance(task.context, ContextFile) and task.context.path.stat().st_size > 5_000_000
    with open(task.context.path, encoding="utf-8") as f:
        assert task.expected_answer in f.read()
