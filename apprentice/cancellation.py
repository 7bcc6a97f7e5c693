"""Cancellation through the cogment SDK, whose streams swallow it.

The SDK's ``watch_trials``, ``iteration_updates`` and ``join_trial`` catch ``CancelledError`` and
end as if the stream had ended. A loop around them that cancels its task would then go round
again (reconnect, watch again) and never end, and the web server could not stop. Python keeps
count of the cancellation requests of a task (``Task.cancelling()``), so a loop calls
``raise_if_cancelled()`` after each SDK call that may have swallowed one.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task has been asked to stop (and the SDK swallowed it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
