"""Log-topic target: append the event envelope to a topic of the vendwatch log."""

from __future__ import annotations

import msgspec

from vendwatch.bus import Log, LogError
from vendwatch.delivery.clock import Clock
from vendwatch.delivery.dispatch import DeliveryFailed, Gate, TargetPolicy
from vendwatch.delivery.outbox import Item
from vendwatch.route.rules import TargetSpec


class LogTopicSink:
    def __init__(self, name: str, spec: TargetSpec, clock: Clock, log: Log) -> None:
        assert spec.topic
        self.target, self.topic, self.log = name, spec.topic, log
        self.policy = TargetPolicy(retry=spec.retry, rate_limit=spec.rate_limit, circuit=spec.circuit)
        log.create_topic(spec.topic)

    def deliver(self, item: Item, gate: Gate) -> None:
        gate.take_token()
        event = item.payload["event"]
        key = str(event.get("detail", {}).get("dedupe_key") or event.get("id", ""))
        try:
            self.log.append(self.topic, [(key, msgspec.json.encode(event))])
        except LogError as e:
            raise DeliveryFailed(f"append to {self.topic}: {e}") from None
