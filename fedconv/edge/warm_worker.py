"""A board's warm worker: one long-lived process that holds torch, the data and the model, so
a deployed message costs its training rather than Python and torch start-up.

Flower 1.42 runs every message in a fresh ``flwr-clientapp`` process (Flower issue #3670,
"non-ephemeral ClientApp", is open). The ClientApp a SuperNode loads in deployment,
:mod:`fedconv.edge.board_app`, imports Flower only; when its node config names a
``worker-socket``, it hands the message and context to this process over that Unix socket and
returns the worker's reply content as its own reply, which the server then checks like any
other. The work itself is :data:`fedconv.federation.client_app.app` called as Flower calls it, so the
worker and the in-process path run the same code and give the same numbers.

Written by hand because no library offers a warm ClientApp for Flower's SuperNode; the wire
format is Flower's own (``flwr.common.serde`` protobufs of the Message and Context) framed by
a length prefix, behind a JSON header with the protocol version and the message id.

Safety: the socket is created owner-only (0600, in a folder that only its owner may write)
and a connection from another user is refused (``SO_PEERCRED``). A worker that is absent,
stopped or restarted between rounds costs nothing but speed: the ClientApp says so in one line
and runs the message itself. A worker that dies or hangs while working on a message makes
that message fail with one line naming the socket (the server counts the board as failed for
that round), never a hang past ``server.round_timeout``.

    python -m fedconv.edge.warm_worker --socket /run/fedconv/worker.sock
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import stat
import struct
import sys
import time
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common import serde
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

PROTOCOL = 1
SOCKET_KEY = "worker-socket"  # node config key naming the worker's socket
_LENGTH = struct.Struct(">Q")
_MAX_FRAME = 4 << 30
_REQUEST_READ_TIMEOUT = 60.0  # a client that connects must send its request within this


class WorkerAbsent(ConnectionError):
    """Nothing serves the socket (never started, stopped, or being restarted): run in-process."""


class WorkerFailed(RuntimeError):
    """The worker took the message but did not answer it properly: the message fails."""


# ---------------------------------------------------------------- framing


def _send_frames(sock: socket.socket, *frames: bytes) -> None:
    sock.sendall(b"".join(_LENGTH.pack(len(f)) + f for f in frames))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> bytes:
    (n,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if n > _MAX_FRAME:
        raise EOFError(f"frame of {n} bytes exceeds {_MAX_FRAME}")
    return _recv_exact(sock, n)


# ---------------------------------------------------------------- the ClientApp's side


def call(path: str, message: Message, context: Context, timeout: float) -> tuple[RecordDict, float]:
    """Have the worker at ``path`` handle ``message``; returns the reply's content and the
    worker's seconds of work. Sets ``context.state`` to the worker's. Raises
    :class:`WorkerAbsent` when nothing serves ``path`` (nothing was sent), and
    :class:`WorkerFailed` when the worker took the message but gave no proper answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise WorkerAbsent(f"no warm worker at {path} ({exc.strerror or exc})") from None
        except OSError as exc:
            raise WorkerAbsent(f"warm worker at {path} unreachable ({exc.strerror or exc})") from None
        message_id = message.metadata.message_id
        header = json.dumps({"protocol": PROTOCOL, "message_id": message_id}).encode()
        sock.settimeout(timeout)
        try:
            _send_frames(sock, header, serde.message_to_proto(message).SerializeToString(),
                         serde.context_to_proto(context).SerializeToString())
            reply_header = json.loads(_recv_frame(sock))
            if reply_header.get("status") == "error":
                raise WorkerFailed(str(reply_header.get("error")))
            content, state = _recv_frame(sock), _recv_frame(sock)
        except TimeoutError:
            raise WorkerFailed(f"warm worker at {path} gave no reply within {timeout:g} s "
                               "(server.round_timeout)") from None
        except (EOFError, ConnectionError, ValueError) as exc:
            raise WorkerFailed(f"warm worker at {path} stopped before replying (killed or restarted?): "
                               f"{exc}") from None
    finally:
        sock.close()
    if reply_header.get("status") != "ok" or reply_header.get("reply_to") != message_id:
        raise WorkerFailed(f"warm worker at {path} answered another message "
                           f"({reply_header.get('reply_to')!r}, not {message_id!r})")
    context.state = serde.recorddict_from_proto(ProtoRecordDict.FromString(state))
    return serde.recorddict_from_proto(ProtoRecordDict.FromString(content)), float(reply_header.get("seconds", 0.0))


# ---------------------------------------------------------------- the worker's side


def run_in_process(message: Message, context: Context) -> Message:
    """The message handled by fedconv's ClientApp in this process, as Flower calls it."""
    from fedconv.federation.client_app import app

    return app(message=message, context=context)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class BadRequest(ValueError):
    """A request that is not a ClientApp's: the worker answers it with an error and goes on."""


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], Message, Context]:
    """The request's header, message and context; :class:`BadRequest` for any bytes that
    are not one (a peer may send anything: the worker must outlive it)."""
    try:
        header = json.loads(_recv_frame(conn))
        if not isinstance(header, dict):
            raise BadRequest(f"header is a JSON {type(header).__name__}, not an object")
        if header.get("protocol") != PROTOCOL:
            raise BadRequest(f"warm worker speaks protocol {PROTOCOL}, the ClientApp {header.get('protocol')!r}: "
                             "restart the worker")
        message_frame, context_frame = _recv_frame(conn), _recv_frame(conn)
        message = serde.message_from_proto(ProtoMessage.FromString(message_frame))
        context = serde.context_from_proto(ProtoContext.FromString(context_frame))
    except (OSError, EOFError):
        raise
    except BadRequest:
        raise
    except Exception as exc:  # JSON, protobuf and Flower's serde raise many types for bad bytes
        raise BadRequest(f"malformed request ({type(exc).__name__}: {str(exc)[:200]})") from None
    return header, message, context


def _handle(conn: socket.socket) -> str:
    """Serve one request; returns a line for the worker's log."""
    uid = _peer_uid(conn)
    if uid != os.getuid():
        return f"refused a connection from uid {uid}"
    conn.settimeout(_REQUEST_READ_TIMEOUT)
    try:
        header, message, context = _read_request(conn)
    except BadRequest as exc:
        _send_frames(conn, json.dumps({"status": "error", "error": str(exc)}).encode())
        return f"refused a request: {exc}"
    conn.settimeout(None)
    started = time.perf_counter()
    try:
        reply = run_in_process(message, context)
    except Exception as exc:  # the message fails, the worker stays
        import traceback

        traceback.print_exc(file=sys.stderr)
        error = f"{type(exc).__name__}: {exc}"
        _send_frames(conn, json.dumps({"status": "error", "error": error}).encode())
        return f"{message.metadata.message_type} failed: {error}"
    seconds = time.perf_counter() - started
    _send_frames(conn, json.dumps({"status": "ok", "reply_to": header.get("message_id"), "seconds": seconds}).encode(),
                 serde.recorddict_to_proto(reply.content).SerializeToString(),
                 serde.recorddict_to_proto(context.state).SerializeToString())
    return f"{message.metadata.message_type} of run {context.run_id} in {seconds:.2f} s"


def _owner_only_folder(folder: Path) -> None:
    """Create the socket's folder 0700, or accept an existing one only this user (or root,
    for a sticky folder such as /tmp's) can write to."""
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    info = folder.stat()
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if info.st_uid not in (os.getuid(), 0) or (writable_by_others and not info.st_mode & stat.S_ISVTX):
        raise SystemExit(f"error: --socket folder {folder} may be written by other users; use a folder of your own "
                         "(it is created 0700 when missing)")


def _claim(path: Path) -> socket.socket:
    """Bind ``path`` owner-only, replacing a stale socket left by a worker that died."""
    _owner_only_folder(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SystemExit(f"error: --socket {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: its worker is gone
        else:
            raise SystemExit(f"error: another warm worker already serves {path}")
        finally:
            probe.close()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    server.listen(8)
    return server


def serve(path: Path, preload: tuple[str, ...] = ("fedconv.federation.client_app", "torch._dynamo")) -> None:
    """Serve messages one at a time until SIGTERM/SIGINT (a SuperNode runs one at a time)."""
    import importlib

    server = _claim(path)

    def stop(signum: int, _frame: Any) -> None:
        server.close()
        path.unlink(missing_ok=True)
        print(f"warm worker: stopped (signal {signum})", flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    t0 = time.perf_counter()
    for module in preload:  # what every message needs: paid once, here
        importlib.import_module(module)
    print(f"warm worker: pid {os.getpid()} serving {path} (ready in {time.perf_counter() - t0:.1f} s)", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            line = serve_one(conn)
        print(f"warm worker: {line}", flush=True)


def serve_one(conn: socket.socket) -> str:
    """One connection, whatever its peer sends: a line for the log, never an exception."""
    try:
        return _handle(conn)
    except Exception as exc:  # noqa: BLE001 - one request, whatever it was, never ends the worker
        return f"dropped a request ({type(exc).__name__}: {str(exc)[:200]})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedconv.edge.warm_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, type=Path,
                        help="Unix socket to serve; the SuperNode's node config names it as worker-socket=...")
    args = parser.parse_args(argv)
    serve(args.socket.expanduser().absolute())
    return 0


if __name__ == "__main__":
    sys.exit(main())
