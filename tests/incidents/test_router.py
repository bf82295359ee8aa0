"""The router: rules select targets; signed webhooks, PagerDuty, Slack and a log topic
receive events over real HTTP; per-target retry and DLQ; exactly-once enqueue."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from incident_helpers import context, make_signal, publish
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from vendwatch.bus import BUSINESS
from vendwatch.delivery.clock import VirtualClock
from vendwatch.delivery.outbox import Outbox
from vendwatch.emulators.base import Fault, Faults, ThreadedServer
from vendwatch.route.pagerduty.emulator import PagerDutyEmulator
from vendwatch.route.role import Router
from vendwatch.route.rules import parse_rules
from vendwatch.route.webhook import verify

SECRET = "s3cret"
ROUTING_KEY = "R" * 32


class Receiver:
    """A webhook receiver that checks signatures, and a Slack incoming-webhook stand-in."""

    def __init__(self, clock: VirtualClock) -> None:
        self.faults = Faults(clock=clock.now)
        self.hooks: list[dict[str, Any]] = []
        self.slack: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"]),
                                     Route("/slack", self.slack_ep, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        f = self.faults.take("POST", "/hook", "")
        if f is not None:
            self.faults.log("POST", "/hook", "", f.status)
            return PlainTextResponse("nope", f.status)
        ok = verify(SECRET, request.headers["x-vendwatch-timestamp"], body, request.headers["x-vendwatch-signature"])
        with self.lock:
            if ok:
                self.hooks.append(msgspec.json.decode(body))
            else:
                self.bad_signatures += 1
        self.faults.log("POST", "/hook", "", 204 if ok else 401)
        return Response(status_code=204 if ok else 401)

    async def slack_ep(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        if not isinstance(body, dict) or not body.get("text"):
            return PlainTextResponse("invalid_payload", 400)
        with self.lock:
            self.slack.append(body)
        return PlainTextResponse("ok")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def servers(clock: VirtualClock) -> Iterator[tuple[Receiver, str, PagerDutyEmulator, str]]:
    rx = Receiver(clock)
    pd = PagerDutyEmulator(clock=clock.now)
    s1, s2 = ThreadedServer(rx.app).start(), pd.serve()
    yield rx, s1.url, pd, s2.url
    s1.stop()
    s2.stop()


def rules_doc(hook_url: str, pd_url: str) -> dict[str, Any]:
    return {
        "targets": {
            "ops-hook": {"type": "webhook", "url": f"{hook_url}/hook", "secret": SECRET,
                         "retry": {"max_attempts": 3, "backoff_initial_s": 1, "backoff_max_s": 4}},
            "pager": {"type": "pagerduty", "url": f"{pd_url}/v2/enqueue", "routing_key": ROUTING_KEY},
            "chat": {"type": "slack", "url": f"{hook_url}/slack"},
            "audit": {"type": "log", "topic": "routed"},
        },
        "rules": [
            {"name": "critical-page", "pattern": {"detail": {"severity": ["critical"], "kind": ["incident"]}},
             "targets": ["pager", "orchestrator"]},
            {"name": "everything-to-hook", "pattern": {"source": [{"prefix": "vendwatch"}]}, "targets": ["ops-hook"]},
            {"name": "stock-to-chat", "pattern": {"detail": {"rule_id": [{"wildcard": "low-stock*"}]}},
             "targets": ["chat", "audit"]},
        ],
    }


def run_for(router: Router, clock: VirtualClock, seconds: float, step_s: float = 1.0) -> None:
    end = clock.now() + seconds
    while clock.now() < end:
        clock.advance(step_s)
        router.step(0.01)


def test_events_reach_the_targets_their_rules_select(tmp_path: Path, clock: VirtualClock, servers: Any) -> None:
    rx, hook_url, pd, pd_url = servers
    ctx = context(tmp_path)
    router = Router(ctx, clock=clock, rules=parse_rules(rules_doc(hook_url, pd_url)))
    publish(ctx, make_signal(clock, severity="critical"))
    publish(ctx, make_signal(clock, key="low-stock/VM-0001/A1", rule_id="low-stock", kind="business",
                             severity="info", summary="slot A1 at 2 items"))
    ctx.log.append(BUSINESS, [("refill", msgspec.json.encode({"kind": "refill", "device_id": "VM-0001"}))])
    run_for(router, clock, 3)

    assert len(rx.hooks) == 3 and rx.bad_signatures == 0  # all three match the prefix rule
    assert {h["detail-type"] for h in rx.hooks} == {"Signal Firing", "Business Event"}
    assert list(pd.alerts) == ["offline/VM-0001"] and pd.alerts["offline/VM-0001"]["severity"] == "critical"
    assert len(rx.slack) == 1 and "slot A1" in rx.slack[0]["text"]
    routed = ctx.log.read("routed", 0, 0) + ctx.log.read("routed", 1, 0)
    assert [msgspec.json.decode(r.value)["detail"]["rule_id"] for r in routed] == ["low-stock"]

    publish(ctx, make_signal(clock, severity="critical", status="resolved"))
    run_for(router, clock, 3)
    assert pd.alerts["offline/VM-0001"]["status"] == "resolved"


def test_retries_5xx_then_dead_letters_after_max_attempts(tmp_path: Path, clock: VirtualClock,
                                                          servers: Any) -> None:
    rx, hook_url, _, pd_url = servers
    ctx = context(tmp_path)
    router = Router(ctx, clock=clock, rules=parse_rules(rules_doc(hook_url, pd_url)))
    rx.faults.add(Fault(status=503, count=2))
    publish(ctx, make_signal(clock, severity="minor"))
    run_for(router, clock, 30)
    assert len(rx.hooks) == 1  # two 503s, then delivered
    assert [r.status for r in rx.faults.requests] == [503, 503, 204]

    rx.faults.add(Fault(status=500))  # down for good
    publish(ctx, make_signal(clock, severity="minor", seq=1))
    run_for(router, clock, 60)
    dead = Outbox(ctx.state.db).dlq_list("ops-hook")
    assert len(dead) == 1 and dead[0]["attempts"] == 3 and dead[0]["last_status"] == 500


def test_4xx_is_not_retried(tmp_path: Path, clock: VirtualClock, servers: Any) -> None:
    rx, hook_url, pd, pd_url = servers
    doc = rules_doc(hook_url, pd_url)
    doc["targets"]["pager"]["routing_key"] = "too-short"  # PagerDuty answers 400 invalid event
    ctx = context(tmp_path)
    router = Router(ctx, clock=clock, rules=parse_rules(doc))
    publish(ctx, make_signal(clock, severity="critical"))
    run_for(router, clock, 5)
    [dead] = Outbox(ctx.state.db).dlq_list("pager")
    assert dead["last_status"] == 400 and dead["attempts"] == 1
    assert len(pd.faults.calls()) == 1


def test_enqueue_is_exactly_once_across_restarts(tmp_path: Path, clock: VirtualClock, servers: Any) -> None:
    rx, hook_url, _, pd_url = servers
    ctx = context(tmp_path)
    rules = parse_rules(rules_doc(hook_url, pd_url))
    r1 = Router(ctx, clock=clock, rules=rules)
    publish(ctx, *(make_signal(clock, key=f"offline/VM-{i:04d}", severity="minor") for i in range(20)))
    r1.open()
    recs = r1._consumer.poll(500, 0.2)  # type: ignore[union-attr]
    r1.process(recs)  # enqueued and checkpointed, not delivered
    r1.close()
    r2 = Router(ctx, clock=clock, rules=rules)  # a restart: resumes from the checkpoint
    run_for(r2, clock, 5)
    assert sorted(h["detail"]["dedupe_key"] for h in rx.hooks) == [f"offline/VM-{i:04d}" for i in range(20)]
