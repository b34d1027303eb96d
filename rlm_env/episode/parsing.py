"""Reading a root reply: which code runs, and whether prose carries a fallback answer.

Only fenced ```repl blocks run, in order (```python and bare fences are ignored, and the
observation says so). A `FINAL(...)` or `FINAL_VAR(...)` written in prose counts only when the
reply has no repl block at all, and is recorded as a text fallback, never as a confirmed answer:
matching FINAL in prose was the original RLM library's most reported bug (plans taken for answers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:(?P<close>```)|\Z)", re.DOTALL)
_TEXT_FINAL_VAR = re.compile(r"^\s*FINAL_VAR\(\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?\s*\)\s*$", re.MULTILINE)
_TEXT_FINAL = re.compile(r"^\s*FINAL\((.*)\)\s*$", re.MULTILINE | re.DOTALL)


@dataclass
class ParsedReply:
    code_blocks: list[str]
    """Bodies of complete ```repl blocks, in order."""
    unclosed_repl_block: bool
    """A ```repl block was opened but never closed (typically a reply cut by max_tokens)."""
    other_fences: list[str]
    """Languages of fenced blocks that were not run (e.g. "python")."""
    text_final: str | None
    """Argument of a prose FINAL(...), only when there are no repl blocks."""
    text_final_var: str | None
    """Variable name of a prose FINAL_VAR(...), only when there are no repl blocks."""


def parse_reply(text: str, languages: tuple[str, ...] = ("repl",)) -> ParsedReply:
    """Split a reply into runnable blocks (fences tagged with one of `languages`) and the rest."""
    blocks: list[str] = []
    other: list[str] = []
    unclosed = False
    for match in _FENCE.finditer(text):
        lang, body = match.group(1).lower(), match.group(2)
        closed = match.group("close") is not None
        if lang in languages:
            if closed:
                blocks.append(body.rstrip("\n"))
            else:
                unclosed = True
        else:
            other.append(lang or "(none)")
    text_final = text_final_var = None
    if not blocks:
        prose = _FENCE.sub("", text)
        var = _TEXT_FINAL_VAR.search(prose)
        if var:
            text_final_var = var.group(1)
        else:
            final = _TEXT_FINAL.search(prose)
            if final:
                text_final = _strip_quotes(final.group(1).strip())
    return ParsedReply(blocks, unclosed, other, text_final, text_final_var)


def _strip_quotes(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def no_code_message(parsed: ParsedReply) -> str:
    """The observation for a reply that ran nothing."""
    if parsed.unclosed_repl_block:
        return "Your ```repl block was not closed (the reply may have been cut off), so nothing ran."
    if parsed.other_fences:
        langs = ", ".join(sorted(set(parsed.other_fences)))
        return f"No ```repl block found; fenced blocks marked {langs} are not run. Use ```repl."
    return "No ```repl block found, so nothing ran. Write code in a ```repl block."
