"""Exceptions raised by the primitives.

.. important::
   Plain exception classes: they belong to no thread or hub.
"""


class ClosedError(RuntimeError):
    """Work was sent to a thread, hub or trigger that has ended or was closed.

    Raised at once by the call that sends it, or delivered through the
    :class:`~sync_primitives.AsyncResult` of work that was queued when its thread ended:
    work is never silently dropped.
    """


class WouldDeadlockError(RuntimeError):
    """A blocking call that could never return was refused.

    Examples: a blocking wait in a hub greenlet (which would stop the very loop that must
    wake it), acquiring a :class:`~sync_primitives.Lock` the calling greenlet already holds,
    or a thread waiting for its own end.
    """


class ThreadStoppedError(RuntimeError):
    """:meth:`~sync_primitives.Thread.stop` interrupted the thread's target before it returned."""
