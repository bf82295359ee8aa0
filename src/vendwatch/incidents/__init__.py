"""Incident orchestration (the Lambda + SQS part): lifecycle, incident store, durable
outbox with rate limits, retries, circuit breaker and DLQ, and the ServiceNow
connector. See docs/incidents.md."""
