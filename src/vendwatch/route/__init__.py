"""The business event bus (the EventBridge part): event patterns, routing rules,
the router role and one folder per target type (webhook, slack, pagerduty, logtopic)."""
