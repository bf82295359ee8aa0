"""ServiceNow connector: Table API client, field mapping and the outbox sink."""
