"""Roles and the process that runs them.

A *role* is one part of the pipeline (collector, device-state, detector, router,
orchestrator, lake-writer, mqtt-bridge, console). ``vendwatch serve`` runs the roles
named in ``server.roles`` (the stages in child processes of their own, ``vendwatch.procs``);
``vendwatch run ROLE`` runs one. Each role
module exposes ``build(ctx) -> Component``; modules that serve HTTP also expose
``routes(ctx) -> list[starlette.routing.BaseRoute]``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vendwatch.bus import Log, open_log
from vendwatch.config import Settings
from vendwatch.errors import Unavailable
from vendwatch.observe.logs import role_context
from vendwatch.observe.metrics import ROLE_RESTARTS
from vendwatch.state import StateStore, open_state

log = logging.getLogger("vendwatch.runtime")

__all__ = ["ROLES", "Context", "RoleConfigError", "Supervisor", "Unavailable", "preflight"]

# role -> "module:function" building its Component (None: HTTP-only role)
ROLES: dict[str, str | None] = {
    "collector": None,
    "console": None,
    "device-state": "vendwatch.state.projector:build",
    "detector": "vendwatch.detect.role:build",
    "router": "vendwatch.route.role:build",
    "orchestrator": "vendwatch.incidents.role:build",
    "lake-writer": "vendwatch.lake.role:build",
    "lake-jobs": "vendwatch.lake.jobs:build",
    "mqtt-bridge": "vendwatch.ingest.mqtt:build",
    "sql-server": "vendwatch.lake.pgwire.server:build",
}

# HTTP routes: which module contributes routes for which roles
HTTP_ROUTES: dict[str, tuple[str, ...]] = {
    "vendwatch.ingest.app:routes": ("collector",),
    "vendwatch.api.devices:routes": ("console",),
    "vendwatch.incidents.api:routes": ("console",),
    "vendwatch.lake.api:routes": ("console",),
    "vendwatch.console.app:routes": ("console",),
    "vendwatch.observe.api:routes": ("console",),
}


class RoleConfigError(Exception):
    """A role cannot start with these settings; the message names the setting."""


def preflight(settings: Settings, roles: Sequence[str]) -> None:
    """Check what a role would refuse at its start, before anything starts: ``serve`` and
    ``run`` then stop at once with the reason instead of a role crash-looping (in a role
    process of its own, or as a traceback of the whole server)."""
    if "detector" in roles:
        from vendwatch.detect.rules import RuleError, load_ruleset

        try:
            load_ruleset(settings.detect.rule_files, settings.detect.default_pack)
        except RuleError as e:
            raise RoleConfigError(f"detect.rule_files: {e}") from None
    if any(r in roles for r in ("lake-writer", "lake-jobs")):
        from vendwatch.lake.catalog import local_problem

        problem = local_problem(settings)
        if problem:
            raise RoleConfigError(problem)


class Component(Protocol):
    name: str

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; return promptly after it is."""


@dataclass
class Context:
    """What a role needs: settings and lazily opened shared resources."""

    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    _log: Log | None = None
    _state: StateStore | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def log(self) -> Log:
        with self._lock:
            if self._log is None:
                self._log = open_log(self.settings)
            return self._log

    @property
    def state(self) -> StateStore:
        with self._lock:
            if self._state is None:
                self._state = open_state(self.settings)
            return self._state

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        if self._state is not None:
            self._state.close()


def load(ref: str) -> Callable[..., Any] | None:
    """Import ``module:attr``; None when the module is not part of this build."""
    mod_name, _, attr = ref.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            log.debug("optional module %s not present", mod_name)
            return None
        raise
    return getattr(mod, attr)  # type: ignore[no-any-return]


def build_components(ctx: Context, roles: list[str], also_known: Sequence[str] = ()) -> list[Component]:
    """The components of ``roles``; ``also_known`` are roles checked by name only (they run elsewhere)."""
    unknown = [r for r in [*roles, *also_known] if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown role(s): {', '.join(unknown)}; known: {', '.join(ROLES)}")
    out = []
    for role in roles:
        ref = ROLES[role]
        if ref is None:
            continue
        factory = load(ref)
        if factory is None:
            log.warning("role %s is not available in this build; skipped", role)
            continue
        out.append(factory(ctx))
    return out


def build_routes(ctx: Context, roles: list[str]) -> list[Any]:
    routes: list[Any] = []
    for ref, for_roles in HTTP_ROUTES.items():
        if any(r in roles for r in for_roles):
            fn = load(ref)
            if fn is not None:
                routes.extend(fn(ctx))
    return routes


class Supervisor:
    """Runs components in threads; a component that crashes is restarted with backoff."""

    def __init__(self, ctx: Context, components: list[Component]) -> None:
        self.ctx = ctx
        self.components = components
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.ctx.settings.log_archive:
            from vendwatch.observe import archive

            archive.install(self.ctx.log, self.ctx.settings.log_archive_level)
        for c in self.components:
            t = threading.Thread(target=self._run, args=(c,), name=f"vw-{c.name}", daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, c: Component) -> None:
        with role_context(c.name):  # every line this thread logs names its role
            self._supervise(c)

    def _supervise(self, c: Component) -> None:
        from vendwatch.stage import health  # the stage module imports this one

        backoff = 0.5
        h = health(self.ctx, c.name)
        while not self.ctx.stop.is_set():
            started = time.monotonic()
            try:
                c.run(self.ctx.stop)
                return
            except Exception as e:
                if isinstance(e, Unavailable):
                    log.error("component %s cannot work: %s; retrying in %.1fs", c.name, e, backoff)
                else:
                    log.exception("component %s crashed; restarting in %.1fs", c.name, backoff)
                ROLE_RESTARTS.labels(c.name).inc()
                # /healthz reports a component that keeps crashing (stage_problems)
                h.crashes_in_row = 1 if time.monotonic() - started > 60 else h.crashes_in_row + 1
                h.last_crash_at = time.time()
                h.last_error = f"{type(e).__name__}: {e}"
            if time.monotonic() - started > 60:
                backoff = 0.5
            self.ctx.stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def stop(self, timeout_s: float = 10.0) -> None:
        self.ctx.stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.ctx.settings.log_archive:
            from vendwatch.observe import archive

            archive.uninstall()  # ships the last lines while the log is still open
