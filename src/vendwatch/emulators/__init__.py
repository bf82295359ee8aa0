"""Emulators of outside systems for development, demos and tests (not used in production).

Each reproduces what its vendor documents: query language, state model, permissions,
field limits, throttling and auth expiry.
"""
