"""Turn GLM's raw output into answer text: drop thinking and grounding-box markers."""

from __future__ import annotations

import re

BOX_MARKERS = ("<|begin_of_box|>", "<|end_of_box|>")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S)


def split_thinking(text: str) -> tuple[str | None, str]:
    """Split raw text into (thinking, answer); an unclosed <think> is all thinking."""
    thinking = None
    if THINK_CLOSE in text:
        head, _, text = text.partition(THINK_CLOSE)
        thinking = head.replace(THINK_OPEN, "").strip() or None
    elif text.lstrip().startswith(THINK_OPEN):
        return text.replace(THINK_OPEN, "").strip() or None, ""
    text = _THINK_BLOCK.sub("", text)
    for marker in BOX_MARKERS:
        text = text.replace(marker, "")
    return thinking, text


class AnswerFilter:
    """Incremental version of split_thinking for streaming: feed raw pieces, get answer pieces."""

    _MARKERS = (THINK_OPEN, THINK_CLOSE, *BOX_MARKERS)

    def __init__(self, thinking: bool = False):
        self.in_think = thinking  # thinking on: the answer starts after </think>
        self._pending = ""

    def feed(self, piece: str) -> str:
        buf = self._pending + piece
        out = []
        while buf:
            if self.in_think:
                end = buf.find(THINK_CLOSE)
                if end < 0:
                    self._pending = buf[-len(THINK_CLOSE) + 1 :]  # a marker may straddle pieces
                    return "".join(out)
                buf = buf[end + len(THINK_CLOSE) :]
                self.in_think = False
                continue
            idx = buf.find("<")
            if idx < 0:
                out.append(buf)
                buf = ""
                break
            out.append(buf[:idx])
            buf = buf[idx:]
            marker = next((m for m in self._MARKERS if buf.startswith(m)), None)
            if marker:
                buf = buf[len(marker) :]
                self.in_think = marker == THINK_OPEN
            elif any(m.startswith(buf) for m in self._MARKERS):
                break  # could be the start of a marker: wait for more text
            else:
                out.append("<")
                buf = buf[1:]
        self._pending = buf
        return "".join(out)

    def flush(self) -> str:
        rest, self._pending = ("" if self.in_think else self._pending), ""
        return rest
