"""Ingestion: the collector (HTTP), device authentication, validation, durable group commit."""
