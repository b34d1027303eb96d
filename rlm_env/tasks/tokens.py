"""Counting context length in the root model's tokens.

Task lengths ("an 8k-token haystack") are measured with the tokenizer of the default root
model (SmolLM2-135M-Instruct), because that is what the root model's budget is counted in.
Tasks are data: this module knows no engine and no model cache code. The tokenizer is passed
in (`TokenCounter(path)`, a directory with `tokenizer.json` or the file itself), or found at
`$RLM_ENV_TOKENIZER`, or at the path where `make model` leaves the default model
(`default_tokenizer_dir()`; `rlm-env models --ensure` builds it). It is loaded lazily, on the
first count, and only from disk.

Without a tokenizer, counts are estimates: characters divided by a chars-per-token ratio
calibrated per content type with the real tokenizer (each family passes its own ratio).
Big texts are not tokenized whole: `estimate_from_sample` tokenizes a spread sample and
scales by the measured ratio. Callers record which it was (`"exact"` or `"estimated"`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

DEFAULT_CHARS_PER_TOKEN = 4.2
"""Fallback ratio for English prose/code under the SmolLM2 tokenizer (measured 4.2-4.6)."""

EXACT_LIMIT_CHARS = 2_500_000
"""Texts up to this many characters are tokenized exactly; longer ones are estimated."""

_CHUNK = 64_000


def default_tokenizer_dir() -> Path:
    """Where `make model` caches the default model, and so its tokenizer: a path (honouring
    $RLM_ENV_CACHE like the model cache does), not a dependency on the engines."""
    root = os.environ.get("RLM_ENV_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "rlm-env"
    return base / "models" / "SmolLM2-135M-Instruct"


class TokenCounter:
    """Counts tokens with a real tokenizer when one is on disk, else estimates them.

    `TokenCounter()` looks for the default model's tokenizer; `TokenCounter(path)` uses the
    given directory or `tokenizer.json`; `TokenCounter(False)` never loads one (estimates only).
    """

    def __init__(self, tokenizer_path: str | os.PathLike[str] | bool | None = None):
        self._spec = tokenizer_path
        self._tokenizer: Any = None
        self._loaded = False
        self._lock = threading.Lock()
        self.name: str | None = None
        """Name of the loaded tokenizer (its directory name), None when estimating."""

    # -- loading -------------------------------------------------------------------------
    def _candidates(self) -> list[Path]:
        if self._spec is False:
            return []
        if self._spec not in (None, True):
            return [Path(self._spec).expanduser()]  # type: ignore[arg-type]
        paths = []
        env = os.environ.get("RLM_ENV_TOKENIZER")
        if env:
            paths.append(Path(env).expanduser())
        paths.append(default_tokenizer_dir())
        return paths

    def _load(self) -> Any:
        with self._lock:
            if self._loaded:
                return self._tokenizer
            self._loaded = True
            for path in self._candidates():
                tok = _load_tokenizer(path)
                if tok is not None:
                    self._tokenizer = tok
                    self.name = (path.parent if path.is_file() else path).name
                    break
            if self._tokenizer is None and self._spec not in (None, True, False):
                raise FileNotFoundError(f"no tokenizer found at {self._spec}")
            return self._tokenizer

    @property
    def exact(self) -> bool:
        """True when a real tokenizer is available."""
        return self._load() is not None

    # -- counting ------------------------------------------------------------------------
    def count(self, text: str, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> int:
        """Tokens in `text`: exact with the tokenizer, else len/ratio. Long texts are split at
        line breaks into chunks encoded in a batch (boundary effects are a few tokens)."""
        tok = self._load()
        if tok is None:
            return round(len(text) / chars_per_token)
        return sum(len(e.ids) for e in tok.encode_batch(_chunks(text), add_special_tokens=False))

    def count_many(self, texts: list[str], chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> int:
        """Total tokens over several texts (documents of a corpus, files of a code base)."""
        tok = self._load()
        if tok is None:
            return round(sum(len(t) for t in texts) / chars_per_token)
        pieces = [c for t in texts for c in _chunks(t)]
        return sum(len(e.ids) for e in tok.encode_batch(pieces, add_special_tokens=False))

    def ratio(self, sample: list[str], chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> float:
        """Measured characters per token on a sample (the fallback ratio without a tokenizer)."""
        chars = sum(len(s) for s in sample)
        if not self.exact or chars == 0:
            return chars_per_token
        return chars / max(1, self.count_many(sample))

    def measure(
        self,
        texts: list[str],
        total_chars: int | None = None,
        sample: list[str] | None = None,
        chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
    ) -> tuple[int, str]:
        """(tokens, "exact" | "estimated") for a text given as pieces.

        Exact when a tokenizer is there and the text is at most `EXACT_LIMIT_CHARS`;
        otherwise `total_chars` / the ratio measured on `sample` (or the fallback ratio).
        """
        chars = total_chars if total_chars is not None else sum(len(t) for t in texts)
        if self.exact and chars <= EXACT_LIMIT_CHARS and texts:
            return self.count_many(texts), "exact"
        ratio = self.ratio(sample if sample is not None else texts[:64], chars_per_token)
        return round(chars / ratio), "estimated"

    def describe(self) -> str | None:
        return self.name if self.exact else None


def _chunks(text: str) -> list[str]:
    if len(text) <= _CHUNK:
        return [text]
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + _CHUNK)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def _load_tokenizer(path: Path) -> Any:
    file = path if path.is_file() else path / "tokenizer.json"
    if file.is_file():
        try:
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(file))
        except Exception:
            pass
    if path.is_dir() and any(path.glob("tokenizer*")):
        try:  # a slow/sentencepiece tokenizer only transformers can read
            from transformers import AutoTokenizer

            return _HFAdapter(AutoTokenizer.from_pretrained(str(path)))
        except Exception:
            return None
    return None


class _HFAdapter:
    """Gives a transformers tokenizer the `encode_batch(...)[i].ids` shape of `tokenizers`."""

    def __init__(self, tok: Any):
        self.tok = tok

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[Any]:
        ids = self.tok(texts, add_special_tokens=add_special_tokens)["input_ids"]
        return [type("E", (), {"ids": i})() for i in ids]


_DEFAULT: TokenCounter | None = None


def default_counter() -> TokenCounter:
    """The process-wide counter on the default model's tokenizer (loaded on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = TokenCounter()
    return _DEFAULT
