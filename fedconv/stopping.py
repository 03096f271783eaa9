"""Stopping a simulated run cleanly when its process is told to stop (Ctrl-C, SIGTERM).

Flower's simulation runs the ServerApp in a thread of the caller's process. A signal only
reaches the main thread, which leaves Flower's engine; the ServerApp thread would then wait
out the round timeout for replies that never come, and the process would hang on it. So the
entry point arms a stop flag before the run and sets it on an interrupt; the ServerApp's
message exchange checks the flag while it waits and raises ``RunStopped``, the ServerApp
writes its summary as ``interrupted`` (with the rounds it completed), and the entry point
waits for that before it goes on.

A deployed ServerApp (its own process under a SuperLink) is never armed and exchanges
messages with Flower's plain ``send_and_receive``; ``flwr stop`` ends it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp import Grid

_armed = threading.Event()
_stop = threading.Event()
_server_done = threading.Event()


class RunStopped(Exception):
    """The entry point asked the ServerApp to stop (its process got Ctrl-C or SIGTERM)."""


def arm() -> None:
    """Before a simulated run starts: a stop can be requested, none is pending."""
    _stop.clear()
    _server_done.clear()
    _armed.set()


def disarm() -> None:
    _armed.clear()
    _stop.clear()


def request_stop(timeout: float) -> bool:
    """Ask the running ServerApp to stop; True once it has written its summary."""
    _stop.set()
    return _server_done.wait(timeout)


def server_finished() -> None:
    """The ServerApp has written everything it writes (called last, however it ended)."""
    _server_done.set()


def check() -> None:
    if _stop.is_set():
        raise RunStopped("the run was stopped (Ctrl-C or SIGTERM)")


def exchange(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """``grid.send_and_receive`` that gives up as soon as a stop is requested."""
    if not _armed.is_set():
        return list(grid.send_and_receive(messages, timeout=timeout))
    check()
    pending = set(grid.push_messages(messages))
    interval = float(getattr(grid, "pull_interval", 0.1))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending and _stop.wait(interval):
            check()
    return replies
