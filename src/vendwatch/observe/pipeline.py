"""The Pipeline page's figures, read from this process's Prometheus registry.

``vendwatch serve`` answers for every role: its registry, merged with the samples its
role processes report (``vendwatch.procs``), holds the whole pipeline; the figures are
the ones the Grafana pipeline dashboard computes from the same metrics (rates and
quantiles over the last ``WINDOW_S`` seconds). In a scale-out
deployment each pod exports its own role's metrics and the dashboard aggregates
them; the console's page shows the console process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from vendwatch.observe.logs import _identity, recent_errors
from vendwatch.observe.metrics import POINTS
from vendwatch.procs import metric_families

WINDOW_S = 300.0
_STAGES = ("device-state", "detector", "router", "orchestrator", "lake-writer")
_CIRCUIT = {0: "closed", 1: "half-open", 2: "open"}

_STARTED = time.time()  # counters start at zero with the process
_lock = threading.Lock()
_history: deque[tuple[float, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = deque(maxlen=64)


def _snapshot(ctx: Any = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in metric_families(ctx):  # the role processes' samples merged in
        if not fam.name.startswith("vendwatch_") or fam.name.startswith("vendwatch_fleet"):
            continue
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _window(now: float, ctx: Any = None) -> tuple[dict[Any, float], dict[Any, float], float]:
    """(current samples, samples about WINDOW_S ago or the oldest kept, seconds between them)."""
    cur = _snapshot(ctx)
    with _lock:
        # until a sample WINDOW_S old exists, the window starts with the process (all zero)
        base_t, base = _STARTED, {}
        for t, snap in _history:
            if now - t >= WINDOW_S:
                base_t, base = t, snap
        _history.append((now, cur))
        while len(_history) > 1 and now - _history[0][0] > 2 * WINDOW_S:
            _history.popleft()
    return cur, base, now - base_t


def _get(snap: dict[Any, float], name: str, **labels: str) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


def _sum(snap: dict[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in snap.items() if n == name and want <= set(lab))


def _quantile(cur: dict[Any, float], base: dict[Any, float], name: str, q: float, **labels: str) -> float | None:
    """histogram_quantile over the window's bucket increases (linear within a bucket)."""
    want = set(labels.items())
    buckets: dict[float, float] = {}
    for (n, lab), v in cur.items():
        if n != name + "_bucket" or not want <= set(lab):
            continue
        le = dict(lab)["le"]
        bound = float("inf") if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + v - base.get((n, lab), 0.0)
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, prev_b, prev_c = q * total, 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0.0)
        prev_b, prev_c = b, c
    return prev_b


def pipeline_view(ctx: Any = None, now: float | None = None) -> dict[str, Any]:
    """Per role: rate, lag, errors, restarts; per hop: p50/p99; per target: outbox, DLQ, circuit."""
    now = time.time() if now is None else now
    cur, base, span = _window(now, ctx)
    per_s = 1.0 / span if span > 0 else 0.0

    def rate(name: str, **labels: str) -> float | None:
        return (_sum(cur, name, **labels) - _sum(base, name, **labels)) * per_s if span > 0 else None

    roles = []
    for role in ("collector", *_STAGES):
        row: dict[str, Any] = {"role": role}
        if role == "collector":
            row["rate_per_s"] = rate("vendwatch_ingest_events_total", outcome="accepted")
            row["lag_records"] = row["lag_seconds"] = None
        else:
            row["rate_per_s"] = rate("vendwatch_stage_records_total", stage=role)
            row["lag_records"] = _get(cur, "vendwatch_stage_lag_records", stage=role)
            row["lag_seconds"] = _get(cur, "vendwatch_stage_lag_seconds", stage=role)
        row["errors"] = _sum(cur, "vendwatch_log_messages_total", role=role, level="error") + _sum(
            cur, "vendwatch_log_messages_total", role=role, level="critical")
        row["restarts"] = _sum(cur, "vendwatch_role_restarts_total", role=role)
        roles.append(row)
    hops = [{"hop": hop, "role": role,
             "p50_s": _quantile(cur, base, "vendwatch_pipeline_hop_seconds", 0.5, hop=hop),
             "p99_s": _quantile(cur, base, "vendwatch_pipeline_hop_seconds", 0.99, hop=hop),
             "event_age_p99_s": _quantile(cur, base, "vendwatch_pipeline_event_age_seconds", 0.99, point=hop),
             "count": _sum(cur, "vendwatch_pipeline_hop_seconds_count", hop=hop)}
            for hop, role in POINTS.items()]
    targets: dict[str, dict[str, Any]] = {}
    for (n, lab), v in cur.items():
        labels = dict(lab)
        if "target" not in labels:
            continue
        t = targets.setdefault(labels["target"], {"target": labels["target"], "outbox": 0, "dlq": 0,
                                                  "circuit": "closed", "retries": 0, "dead_letters": 0})
        if n == "vendwatch_incidents_outbox_depth_items":
            t["outbox"] = int(v)
        elif n == "vendwatch_incidents_dlq_depth_items":
            t["dlq"] = int(v)
        elif n == "vendwatch_incidents_circuit_state":
            t["circuit"] = _CIRCUIT.get(int(v), str(v))
        elif n == "vendwatch_incidents_retries_total":
            t["retries"] = int(v)
        elif n == "vendwatch_incidents_dead_letters_total":
            t["dead_letters"] = int(v)
    return {
        "replica": _identity["replica"],
        "window_s": round(span, 1),
        "roles": roles,
        "hops": hops,
        "targets": sorted(targets.values(), key=lambda t: t["target"]),
        "ingest": {"unavailable_503": _sum(cur, "vendwatch_ingest_unavailable_total"),
                   "rate_limited_429": _sum(cur, "vendwatch_ingest_rate_limited_total")},
        "last_errors": _last_errors(ctx),
    }


def _last_errors(ctx: Any, n: int = 20) -> list[dict[str, Any]]:
    """The newest error lines first, of this process and its role processes."""
    procs = ctx.extras.get("role_processes") if ctx is not None else None
    lines = recent_errors() + (procs.recent_errors() if procs is not None else [])
    return sorted(lines, key=lambda e: str(e.get("ts", "")), reverse=True)[:n]
