"""The ``vendwatch`` command line."""
