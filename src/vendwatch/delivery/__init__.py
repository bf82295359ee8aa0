"""Outbound delivery shared by the router and the incident orchestrator: the durable
outbox and DLQ, per-target rate limit, retries with backoff, circuit breaker, and the
stage that drains the outbox."""
