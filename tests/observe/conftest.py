"""The console browser tests' fixtures (a served fleet, a headless chromium), shared."""

from tests.test_console_browser import browser, fleet  # noqa: F401 - pytest finds fixtures by name
