"""Stop strings: text is held back while it could still be the start of a stop string.

A stop string may span tokens ("###" from "#" then "##"). Text is released only once no stop
string can begin in it: the longest tail of the text so far that is a prefix of a stop string
waits for more text. A stop string found ends the text just before it; what follows it is
dropped. At the end of the sequence, the held tail is released.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    """Filters one sequence's text deltas against its stop strings."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """The text that is now safe to emit; sets `stopped` when a stop string was found."""
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        text = self._held + delta
        found = [index for index in (text.find(stop) for stop in self._stops) if index >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return text[: min(found)]
        hold = max((_overlap(text, stop) for stop in self._stops), default=0)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """What was held back, at the end of a sequence that stopped otherwise."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _overlap(text: str, stop: str) -> int:
    """The length of the longest tail of `text` that is a proper prefix of `stop`."""
    for length in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-length:]):
            return length
    return 0
