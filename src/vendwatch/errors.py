"""Exception kinds shared across the parts of vendwatch (a leaf module: imports nothing)."""

from __future__ import annotations


class Unavailable(Exception):
    """Something a role needs (the log, the state database, a catalog) does not answer now
    but may later.

    Its message names what is missing and why (a setting, a host and port, the driver's
    reason), without secrets. The supervisor logs it as one line and restarts the role with
    backoff; ``serve`` and ``run`` wait for it at start. A traceback would only repeat the
    driver's internals at every retry.
    """


class TransactionConflict(Unavailable):
    """The database rolled a transaction back to break a deadlock or a serialization
    conflict with another transaction (PostgreSQL's SQLSTATE class 40). Nothing of it was
    written; running it again is the remedy. Stages retry it at once a few times."""
