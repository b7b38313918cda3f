"""Start-up timeline, from process start to ready, served at /v1/info."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field


def process_started_at() -> float:
    """Monotonic time at which this process started (10 ms resolution; now if unknown)."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # Fields after the command name (which may hold spaces) start at field 3.
            fields = stat.read().rsplit(")", 1)[1].split()
            started_ticks = int(fields[19])
            uptime_s = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return now
    age_s = uptime_s - started_ticks / os.sysconf("SC_CLK_TCK")
    return now - max(age_s, 0.0)


@dataclass
class Timeline:
    """Named moments since the process started, in order."""

    started_at: float = field(default_factory=process_started_at)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def phases_s(self) -> dict[str, float]:
        """Seconds from each mark to the previous one (the first from process start)."""
        phases, previous = {}, self.started_at
        for name, at in self.marks.items():
            phases[name] = round(at - previous, 4)
            previous = at
        return phases

    def since_start_s(self, name: str) -> float | None:
        at = self.marks.get(name)
        return None if at is None else round(at - self.started_at, 4)
