"""What ``vendwatch demo`` shows while it runs and when it ends.

On a terminal: one panel redrawn in place (rich ``Live``) that always keeps the console
URL and the sign-in token on screen, says which phase the demo is in, and shows a few
counts. Anywhere else (a log file, CI): one short line per refresh. At the end: a short
summary and what to try next, instead of the raw counts (those go to --summary-json/--json).

rich is used because redrawing a multi-line block in place (cursor movement, terminal
width, resize, wrapped lines) is what piles up headers when done by hand.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

# the hook figures worth a glance while the demo runs (name in the summary -> label)
HEADLINE = {
    "signals_total": "signals",
    "incidents_opened": "incidents opened",
    "incidents_open": "open now",
    "servicenow_tickets": "ServiceNow tickets",
    "dlq_depth": "dead letters",
    "raw_events_rows": "rows in lake",
}


def phase(sim_now: float, wall_now: float, speed: float) -> str:
    """Which part of the run the simulator is in, in words."""
    behind = wall_now - sim_now
    if speed > 1 and behind > 1:
        return (f"catching up: replaying the last {_span(behind)} at x{speed:g}; "
                "the rate drops to real time when it reaches the present")
    return "live: the simulated fleet runs in real time (every machine reports at its own interval)"


def _span(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


@dataclass
class Snapshot:
    """One refresh worth of figures."""

    elapsed_s: float
    phase: str
    sim_time: str
    rate: float
    sent: int
    acked: int
    in_log: int
    devices_seen: int
    devices: int
    rejected: int
    retries: int
    hooks: dict[str, Any] = field(default_factory=dict)
    hook_errors: dict[str, str] = field(default_factory=dict)


def _hook_value(v: Any) -> Any:
    if isinstance(v, dict):
        return sum(x for x in v.values() if isinstance(x, int))
    return v


class DemoDisplay:
    """The live view; ``show`` redraws it, ``note`` prints a line above it."""

    def __init__(self, out: TextIO, url: str, token: str, role: str, data_dir: str,
                 force_terminal: bool | None = None, width: int | None = None) -> None:
        self.console = Console(file=out, highlight=False, force_terminal=force_terminal, width=width)
        self.tty = self.console.is_terminal
        self.url, self.token, self.role, self.data_dir = url, token, role, data_dir
        self.live: Live | None = None
        self.phase = "starting"
        self.last: Snapshot | None = None  # the figures stay on screen while the phase changes
        self._log_streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    def __enter__(self) -> DemoDisplay:
        if self.tty:
            self.live = Live(self._render(None), console=self.console, auto_refresh=False, transient=False,
                             redirect_stderr=True, redirect_stdout=True)
            self.live.start()
            # log lines go above the panel instead of through it
            for h in logging.getLogger().handlers:
                if isinstance(h, logging.StreamHandler) and h.stream in (sys.__stderr__, self.console.file):
                    self._log_streams.append((h, h.stream))
                    h.setStream(sys.stderr)
        else:
            self.note(f"console: {self.url}/  sign in with the {self.role} token {self.token}")
        return self

    def __exit__(self, *exc: object) -> None:
        for h, stream in self._log_streams:
            h.setStream(stream)
        self._log_streams = []
        if self.live is not None:
            self.live.stop()
            self.live = None

    def write(self, text: str) -> None:
        """File-like: each line is printed above the live view."""
        for line in text.splitlines():
            self.note(line)

    def note(self, text: str) -> None:
        # never wrapped: a token or URL cut in two cannot be copied
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def set_phase(self, text: str) -> None:
        self.phase = text
        if self.live is not None:
            self.live.update(self._render(self.last), refresh=True)
        else:
            self.note(f"phase: {text}")

    def show(self, snap: Snapshot) -> None:
        self.phase = snap.phase
        self.last = snap
        if self.live is not None:
            self.live.update(self._render(snap), refresh=True)
        else:
            self.note(progress_line(snap))

    def _render(self, snap: Snapshot | None) -> Panel:
        head = Table.grid(padding=(0, 1))
        head.add_column(style="bold")
        head.add_column()
        head.add_row("console", Text(f"{self.url}/"))
        head.add_row("sign in", Text(f"{self.token}  ({self.role} token)"))
        head.add_row("phase", Text(self.phase, style="bold"))
        parts: list[Any] = [head]
        if snap is not None:
            head.add_row("simulated", Text(f"{snap.sim_time} UTC, {snap.elapsed_s:.0f} s running"))
            counts = Table(box=None, padding=(0, 2), show_edge=False)
            for label in ("events/s", "sent", "acked", "in log", "machines seen", "rejected", "retries"):
                counts.add_column(label, justify="right")
            counts.add_row(f"{snap.rate:,.0f}", f"{snap.sent:,}", f"{snap.acked:,}", f"~{snap.in_log:,}",
                           f"{snap.devices_seen}/{snap.devices}", f"{snap.rejected:,}", f"{snap.retries:,}")
            parts += [Text(""), counts]
            shown = {label: _hook_value(snap.hooks[k]) for k, label in HEADLINE.items() if k in snap.hooks}
            if shown:
                pipeline = Table(box=None, padding=(0, 2), show_edge=False)
                for label in shown:
                    pipeline.add_column(label, justify="right")
                pipeline.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in shown.values()))
                parts += [Text(""), pipeline]
            if snap.hook_errors:
                parts.append(Text("summary errors: " + "; ".join(f"{k}: {v}" for k, v in snap.hook_errors.items()),
                                  style="red"))
        parts.append(Text("Ctrl-C stops: the simulator stops, the pipeline drains, a summary follows.",
                          style="dim"))
        return Panel(Group(*parts), title="vendwatch demo", title_align="left", expand=False)


def progress_line(snap: Snapshot) -> str:
    """The non-terminal form: one short line per refresh."""
    first = snap.phase.split(":")[0]
    return (f"[{snap.elapsed_s:5.0f}s {first}] {snap.rate:,.0f} ev/s  acked {snap.acked:,}  "
            f"in log ~{snap.in_log:,}  machines {snap.devices_seen}/{snap.devices}  "
            f"rejected {snap.rejected:,}  retries {snap.retries:,}")


def end_summary(s: dict[str, Any], token: str, role: str) -> list[str]:
    """A few lines on how the run went, then what to try next."""
    data_dir = s.get("data_dir", "./vendwatch-data")
    same = s.get("events_acked") == s.get("events_in_log") and not s.get("duplicate_events_in_log")
    lines = [
        f"vendwatch demo: {s.get('wall_seconds', 0):g} s, {s.get('devices', 0)} machines over "
        f"{s.get('sites', 0)} sites, {_span(float(s.get('simulated_seconds', 0)))} simulated",
        f"  events: {s.get('events_acked', 0):,} acknowledged, {s.get('events_in_log', 0):,} in the log"
        + (" (each stored once)" if same else " (MISMATCH: see --summary-json)"),
        f"  machines seen: {s.get('devices_seen', 0)}; faults injected: {sum((s.get('faults_injected') or {}).values())}",
    ]
    pipe = [f"{label} {_hook_value(s[k]):,}" for k, label in HEADLINE.items()
            if k in s and isinstance(_hook_value(s[k]), int)]
    if pipe:
        lines.append("  pipeline: " + ", ".join(pipe))
    if not s.get("drained", True):
        lines.append("  the pipeline had not caught up when the demo stopped: stage_lag in --summary-json")
    lines += [
        "",
        "Next:",
        f"  vendwatch serve --data-dir {data_dir}        # the console again at http://127.0.0.1:8080/",
        f"      sign in with the {role} token {token}",
        f"  vendwatch incidents list --data-dir {data_dir}",
        f"  vendwatch report revenue --data-dir {data_dir}",
        f"  vendwatch sql --data-dir {data_dir} \"SELECT type, count(*) FROM raw.events GROUP BY 1\"",
        "  vendwatch demo --servicenow-emulator        # incidents as ServiceNow tickets",
        "Full counts: --summary-json FILE or --json.",
    ]
    return lines


def now_text(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch))
