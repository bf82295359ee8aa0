"""HTTP server: collector and operator API in one Starlette app."""
