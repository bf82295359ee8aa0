"""The simulated clock of a live run: accelerated, but never ahead of the wall clock.

The collector refuses events stamped too far in the future, so an accelerated run
starts in the past: with speed X for D seconds the simulated clock starts
``min(D * (X - 1), max_backlog_s)`` seconds ago, runs X times faster than the wall
clock, and once it has caught up with the present keeps pace with it (speed 1).
``max_backlog_s`` (default 50 min) keeps events younger than the collector's "late"
threshold (1 h by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_MAX_BACKLOG_S = 3000.0


class SimClock:
    def __init__(
        self,
        speed: float = 1.0,
        duration_s: float | None = None,
        max_backlog_s: float = DEFAULT_MAX_BACKLOG_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self.wall = wall
        self.wall_start = wall()
        wanted = (duration_s * (speed - 1)) if duration_s is not None else float("inf")
        self.backlog_s = max(0.0, min(wanted, max_backlog_s)) if speed > 1 else 0.0
        self.sim_start = self.wall_start - self.backlog_s

    def now(self) -> float:
        """Simulated epoch seconds (never later than the wall clock)."""
        w = self.wall()
        return min(self.sim_start + (w - self.wall_start) * self.speed, w)

    def elapsed_wall(self) -> float:
        return self.wall() - self.wall_start
