"""The hot-path histogram exposes exactly what prometheus_client's Histogram exposes for
the same observations (the text a Prometheus server scrapes), from any number of threads."""

from __future__ import annotations

import math
import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from vendwatch.observe.histogram import FastHistogram

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([*_BUCKETS, 0.0, -0.0, -1.0, math.nextafter(0.5, 1), math.nextafter(0.5, 0)]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["received", "durable", "ticket"]), values), max_size=60))
def test_the_exposition_is_prometheus_clients_for_the_same_observations(obs: list[tuple[str, float]]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    h = Histogram("vw_hop_seconds", "a hop", ["hop"], buckets=_BUCKETS, registry=theirs)
    f = FastHistogram("vw_hop_seconds", "a hop", ["hop"], buckets=_BUCKETS, registry=ours)
    plain_h = Histogram("vw_request_seconds", "requests", buckets=_BUCKETS, registry=theirs)
    plain_f = FastHistogram("vw_request_seconds", "requests", buckets=_BUCKETS, registry=ours)
    for hop, v in obs:
        h.labels(hop).observe(v)
        f.labels(hop).observe(v)
        plain_h.observe(v)
        plain_f.observe(v)
    assert _exposition(ours) == _exposition(theirs)


def test_no_observation_is_lost_between_threads() -> None:
    reg = CollectorRegistry()
    f = FastHistogram("vw_latency_seconds", "latency", buckets=_BUCKETS, registry=reg)
    n, threads = 20_000, 8

    def work(k: int) -> None:
        for i in range(n):
            f.observe((i % 100) / 10.0 + k)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert reg.get_sample_value("vw_latency_seconds_count") == n * threads
    assert reg.get_sample_value("vw_latency_seconds_bucket", {"le": "+Inf"}) == n * threads
    expected_sum = sum((i % 100) / 10.0 + k for k in range(threads) for i in range(n))
    assert math.isclose(reg.get_sample_value("vw_latency_seconds_sum") or 0.0, expected_sum, rel_tol=1e-9)
