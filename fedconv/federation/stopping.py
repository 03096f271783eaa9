"""Stopping a simulated run cleanly on Ctrl-C or SIGTERM (a batch scheduler's stop).

Flower's simulation runs the ServerApp in a thread of this process and its engine in the
main thread, which is where signals land. Raising there would leave Flower's worker threads
blocked on Ray actors that are being shut down, and the ServerApp thread waiting out the
round timeout: the process hangs or Ray ends it before the run's files are written. So the
first signal only *asks* the run to stop: the ServerApp's message exchange sees the request
while it waits for replies and raises ``RunStopped``, the ServerApp records its completed
rounds as ``interrupted`` and returns, Flower winds down its engine as after any run (the
clients' in-flight updates finish first) and shuts Ray down, and the entry point exits with
128 + the signal number. A second signal quits at once.

A deployed ServerApp (its own process under a SuperLink) never has a run started here:
``flwr stop`` ends it, and its :func:`send_and_receive` is Flower's loop (push, then pull
until every reply is in or the timeout passes) with a shorter pause between pulls:
Flower's ``grid.send_and_receive`` sleeps 3 s (hard-coded in ``flwr/superlink/grid/
http_grid.py``), so a round whose replies arrive after 0.1 s took 3 s.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp import Grid

_running = threading.Event()  # a simulated run is in progress in this process
_requested = threading.Event()  # a signal asked it to stop
_signal: signal.Signals | None = None
DEPLOYED_POLL_SECONDS = 0.25  # between pulls of a deployed ServerApp: 4 small requests a second


class RunStopped(Exception):
    """The process was asked to stop (Ctrl-C or SIGTERM) while the ServerApp waited for replies."""


def install_handlers() -> None:
    """SIGTERM, and SIGINT unless it arrived ignored (a shell's background job), ask a
    running simulation to stop; outside a run they interrupt as Ctrl-C normally does."""
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _signal
    first = _signal is None
    _signal = signal.Signals(signum)
    if _running.is_set() and first:
        _requested.set()
        print(f"fedconv: {_signal.name}: stopping after the clients' current updates "
              "(the completed rounds are kept; signal again to quit at once)", file=sys.stderr, flush=True)
        return
    if _requested.is_set():  # a second signal while stopping: Flower's threads cannot be joined
        quit_now(flush_logs=False)
    raise KeyboardInterrupt(_signal.name)


def quit_now(flush_logs: bool = True) -> None:
    """End the process with 128 + the signal number without joining other threads (after an
    interrupt, Flower's engine threads may wait forever on Ray actors that are gone)."""
    sig = _signal or signal.SIGINT
    print(f"fedconv: interrupted by {sig.name}", file=sys.stderr, flush=True)
    kill_children()
    if flush_logs:
        logging.shutdown()
    sys.stdout.flush()
    os._exit(128 + int(sig))


FINISH_GRACE_SECONDS = 5.0  # how long the end waits for threads that are still finishing their work


def finish(code: int) -> None:
    """End the entry point with ``code``, within seconds: a failed engine can leave Flower's
    threads waiting on actors that are gone, and Python would wait for them for ever. Threads
    still working get a few seconds; then the exit handlers a normal exit runs (Ray's
    shutdown, the tracking sinks' flushes) run, and the process ends without the stuck ones."""
    deadline = time.monotonic() + FINISH_GRACE_SECONDS
    for thread in _other_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    if not _other_threads():
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()  # what sys.exit would have run, before the threads it would wait for
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    kill_children()
    os._exit(code)


def _other_threads() -> list[threading.Thread]:
    """Threads Python's exit would wait for."""
    return [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]


def kill_children() -> None:
    """End every process this one started (a local Ray's GCS, raylet, agents and workers):
    ``os._exit`` skips Ray's shutdown, and its agents would live on as orphans."""
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
    except Exception:  # noqa: BLE001 - no psutil or no /proc: nothing more to do
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=3)


def run_started() -> None:
    _running.set()


def run_ended() -> None:
    _running.clear()


def requested() -> bool:
    """Has a signal asked the current run to stop?"""
    return _requested.is_set()


def reason() -> str:
    """'stopped by SIGTERM' (or SIGINT): what an interrupted run's summary says ended it."""
    return f"stopped by {_signal.name if _signal else 'a signal'}"


def check() -> None:
    if _requested.is_set():
        raise RunStopped(reason())


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float | None) -> list[Message]:
    """Every message exchange of a run (the query, each round's training and evaluation):
    ``grid.send_and_receive``, except that it polls for replies every
    :data:`DEPLOYED_POLL_SECONDS` in deployment and gives up as soon as a stop is requested
    in a simulation."""
    simulated = _running.is_set()
    if simulated:
        check()
    pending = set(grid.push_messages(messages))
    interval = float(getattr(grid, "pull_interval", 0.1)) if simulated else DEPLOYED_POLL_SECONDS
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending and (deadline is None or time.monotonic() < deadline):
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending:
            break
        if not simulated:
            time.sleep(interval)
        elif _requested.wait(interval):
            check()
    return replies
