"""Lab keys (``fedconv certs``): owner-only files, never overwritten in passing,
kept out of git; and the launcher's SuperLink check against a real TLS listener on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedconv.edge.certs import main, make_lab_keys, server_hosts
from fedconv.edge.deploy import superlink_problem

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def private_files(out: Path) -> list[Path]:
    return [out / "ca.key", out / "superlink.key", *sorted((out / "supernodes").glob("supernode-?"))]


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    make_lab_keys(out, ["127.0.0.1"], supernodes=2)
    assert mode(out) == 0o700 and mode(out / "supernodes") == 0o700
    assert len(private_files(out)) == 4
    assert all(mode(p) == 0o600 for p in private_files(out))
    assert mode(out / "ca.crt") & 0o044  # certificates and public keys are for sharing


def test_rerun_adds_a_host_without_touching_any_private_key(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    make_lab_keys(out, ["127.0.0.1"], supernodes=1)
    before = {p: p.read_bytes() for p in private_files(out)}
    make_lab_keys(out, ["127.0.0.1", "lab-server"], supernodes=2)
    assert {p: p.read_bytes() for p in before} == before
    assert "lab-server" in server_hosts(out / "superlink.crt")
    cert = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    key = serialization.load_pem_private_key((out / "superlink.key").read_bytes(), password=None)
    assert cert.public_key() == key.public_key()
    assert (out / "supernodes" / "supernode-1").exists()


def test_force_replaces_the_keys_and_keeps_them_private(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    make_lab_keys(out, ["127.0.0.1"], supernodes=1)
    before = {p: p.read_bytes() for p in private_files(out)}
    make_lab_keys(out, ["127.0.0.1"], supernodes=1, force=True)
    assert all(p.read_bytes() != data for p, data in before.items())
    assert all(mode(p) == 0o600 for p in private_files(out))


def test_a_ca_key_without_its_certificate_is_never_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    make_lab_keys(out, ["127.0.0.1"], supernodes=0)
    (out / "ca.crt").unlink()
    key = (out / "ca.key").read_bytes()
    assert main([str(out), "--host", "127.0.0.1"]) == 2
    assert "ca.crt is not" in capsys.readouterr().err
    assert (out / "ca.key").read_bytes() == key


def test_an_existing_open_folder_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shared-keys"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    assert main([str(out), "--host", "127.0.0.1"]) == 0
    assert f"chmod 700 {out}" in capsys.readouterr().err
    assert mode(out) == 0o755  # the user's folder keeps its mode


def test_the_documented_keys_folder_is_ignored_by_git() -> None:
    for path in ("keys/ca.key", "keys/supernodes/supernode-0"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path


@pytest.fixture
def tls_listener(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """A TLS server on 127.0.0.1 with lab A's SuperLink certificate; yields (port, lab A's
    CA, another lab's CA)."""
    lab, other = make_lab_keys(tmp_path / "a", ["127.0.0.1"], 0), make_lab_keys(tmp_path / "b", ["127.0.0.1"], 0)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(lab.server_cert, lab.server_key)
    context.set_alpn_protocols(["h2"])
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)  # the loop looks at ``stop`` this often
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], lab.ca_cert, other.ca_cert
    stop.set()
    server.close()
    thread.join(timeout=10)


def test_superlink_check_tells_refused_untrusted_and_good_apart(tls_listener: tuple[int, Path, Path]) -> None:
    port, ca, other_ca = tls_listener
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert superlink_problem(f"127.0.0.1:{closed}", None) == "connection refused"
    assert superlink_problem(f"127.0.0.1:{port}", str(ca)) is None
    problem = superlink_problem(f"127.0.0.1:{port}", str(other_ca))
    assert problem is not None and problem.startswith("TLS verification failed")
