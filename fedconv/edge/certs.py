"""``fedconv certs OUT --host IP_OR_NAME ... --supernodes N``: a lab's TLS and auth keys.

Writes a lab certificate authority, the SuperLink's TLS certificate signed by it (every
``--host`` in its subject alternative names: the address the boards dial must be there),
and one EC P-384 key pair per SuperNode in OpenSSH format (what ``flower-supernode
--auth-supernode-private-key`` and ``flwr supernode register`` read). Re-running keeps the
existing CA and keys and only adds what is missing (``--force`` makes everything anew);
a private key is never overwritten otherwise. Private keys are written 0600 into folders
that only their owner can enter (0700); keep OUT outside any repository (see docs/edge.md).

    OUT/ca.crt                      copy to every board (--root-certificates)
    OUT/ca.key                      keep on the machine that makes certificates
    OUT/superlink.crt, superlink.key  the SuperLink's --ssl-certfile / --ssl-keyfile
    OUT/supernodes/supernode-<i>      board i's private key (copy to that board only)
    OUT/supernodes/supernode-<i>.pub  its public key (register it with the SuperLink)
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedconv import atomic

VALID_DAYS = 825  # the longest validity common TLS clients accept for a server certificate
BACKDATE = dt.timedelta(days=1)  # tolerate boards whose clock runs a little behind


@dataclass(frozen=True)
class LabKeys:
    """Paths of everything :func:`make_lab_keys` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    supernode_keys: list[Path]

    def public_key(self, i: int) -> Path:
        return self.supernode_keys[i].with_suffix(".pub")


def _private_dir(path: Path) -> None:
    """Make a folder for private keys that only its owner can enter; a folder that exists
    already is the user's and keeps its mode, with a warning when others can enter it."""
    if not path.exists():
        path.mkdir(parents=True)
        path.chmod(0o700)
    elif path.stat().st_mode & 0o077:
        print(f"warning: {path} is open to other users (mode {path.stat().st_mode & 0o777:o}); "
              f"`chmod 700 {path}` keeps its private keys private", file=sys.stderr)


def _write_private(path: Path, data: bytes, replace: bool = False) -> None:
    """Write a private key readable by its owner only (0600 from the first byte). An
    existing key is replaced only when asked (``--force``), never in passing."""
    if path.exists() and not replace:
        raise FileExistsError(f"{path}: a private key is there already; --force replaces it")
    atomic.write_bytes(path, data, mode=0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedconv lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be in a certificate's names (None: it can): an IP address, or a
    DNS name of letters, digits and hyphens in dot-separated labels (RFC 1123)."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return (f"--host {host!r}: not an IP address or a host name (letters, digits and hyphens in dot-separated "
                "labels of 1-63 characters, e.g. 192.168.1.10 or superlink.lab)")
    return None


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _make_ca(cert_path: Path, key_path: Path, replace: bool) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedconv lab CA"))
        .issuer_name(_name("fedconv lab CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA384())
    )
    _write_private(key_path, _pem_key(key), replace)
    atomic.write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _make_server_cert(ca_cert_path: Path, ca_key_path: Path, cert_path: Path, key_path: Path, hosts: list[str],
                      new_key: bool) -> None:
    """Issue the SuperLink's certificate; for its existing key unless ``new_key`` (adding a
    host to the certificate needs no new private key)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path}: not an EC private key (fedconv.edge.certs makes P-384 keys)")
    if new_key or not key_path.exists():
        key = ec.generate_private_key(ec.SECP384R1())
        _write_private(key_path, _pem_key(key), replace=new_key)
    else:
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC private key (fedconv.edge.certs makes P-384 keys)")
        key = loaded
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    atomic.write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _make_supernode_key(path: Path, replace: bool) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_private(path, private, replace)
    atomic.write_bytes(path.with_suffix(".pub"), public + f" {path.name}\n".encode())


def server_hosts(cert_path: Path) -> list[str]:
    """The names and addresses a SuperLink certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def make_lab_keys(out: Path, hosts: list[str], supernodes: int, force: bool = False) -> LabKeys:
    """Create (or complete) a lab's CA, SuperLink certificate and SuperNode key pairs."""
    if not hosts:
        raise ValueError("--host: give at least one address or name the SuperNodes will dial")
    for host in hosts:
        if problem := host_problem(host):
            raise ValueError(problem)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; give a folder for the keys")
    _private_dir(out)
    keys = LabKeys(
        ca_cert=out / "ca.crt", ca_key=out / "ca.key",
        server_cert=out / "superlink.crt", server_key=out / "superlink.key",
        supernode_keys=[out / "supernodes" / f"supernode-{i}" for i in range(supernodes)],
    )
    if supernodes:
        _private_dir(out / "supernodes")
    if keys.ca_key.exists() != keys.ca_cert.exists() and not force:
        have, lack = (keys.ca_key, keys.ca_cert) if keys.ca_key.exists() else (keys.ca_cert, keys.ca_key)
        raise ValueError(f"{have} is there but {lack} is not; restore it, or --force makes a new CA")
    new_ca = force or not keys.ca_key.exists()
    if new_ca:
        _make_ca(keys.ca_cert, keys.ca_key, replace=force)
    if new_ca or not keys.server_cert.exists() or set(hosts) - set(server_hosts(keys.server_cert)):
        _make_server_cert(keys.ca_cert, keys.ca_key, keys.server_cert, keys.server_key, hosts, new_key=force)
    for path in keys.supernode_keys:
        if force or not path.exists():
            _make_supernode_key(path, replace=force)
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedconv certs", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the keys into")
    parser.add_argument("--host", action="append", default=[],
                        help="IP address or DNS name of the SuperLink as the boards dial it (repeatable); "
                             "localhost and 127.0.0.1 are always added")
    parser.add_argument("--supernodes", type=int, default=0, help="number of SuperNode key pairs (boards)")
    parser.add_argument("--force", action="store_true", help="make a new CA and new keys even where some exist")
    args = parser.parse_args(argv)
    if args.supernodes < 0:
        parser.error("--supernodes must be >= 0")
    hosts = [*args.host, "localhost", "127.0.0.1"]
    if not args.host:
        hosts.insert(0, socket.gethostname())
    try:
        keys = make_lab_keys(args.out, hosts, args.supernodes, force=args.force)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"CA certificate      {keys.ca_cert}  (copy to every board)")
    print(f"SuperLink cert/key  {keys.server_cert}, {keys.server_key}  valid for {', '.join(server_hosts(keys.server_cert))}")
    for i, path in enumerate(keys.supernode_keys):
        print(f"SuperNode {i:<3}       {path} (private, to board {i} only), {keys.public_key(i)} (register it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
