"""``fedconv deploy federation=<name> [overrides]``: a run on real SuperNodes.

Hydra composes the same config groups as the simulation plus ``conf/federation/<name>``;
this module validates them, registers the SuperNodes' public keys with the SuperLink,
writes a one-run Flower App whose ``[tool.flwr.app.config]`` is the flat run config, and
starts it with ``flwr run --stream`` against the SuperLink. The fedconv ServerApp (started
by the SuperLink on its machine) writes the run directory and evaluates the global model on
the dataset's test set there; run this launcher on the SuperLink's machine: it loads that
dataset before starting, so a missing one fails in one line instead of after the SuperNodes
have connected. (Launching from another machine needs the dataset there too, and
``output_dir`` set to a path that exists on the SuperLink's machine.)

``mode=register`` only registers the keys (do it before the boards start their SuperNodes:
an unregistered SuperNode is refused and exits).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import hydra
import tomli_w
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedconv.config import (
    CONF_DIR,
    EXIT_BAD_CONFIG,
    ConfigError,
    config_errors_exit_2,
    plain,
    register_resolvers,
    to_run_config,
    unknown_keys,
)
from fedconv.data.datasets import DatasetError
from fedconv.learning import task
from fedconv.runs import run_dir, tracking
from fedconv.sections import Server
from fedconv.simulation.runtime import write_app_dir
from fedconv.validation import validate

register_resolvers()

CONNECTION = "fedconv"
MODES = ("run", "register")
_TASK_STARTED = False


def flwr_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's processes: our own FLWR_HOME, no telemetry or update checks
    (boards are often offline), and this interpreter's scripts on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",
    }


def _problems(fed: Mapping[str, Any]) -> list[str]:
    out = []
    if not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", str(fed.get("address", ""))):
        out.append(f"federation.address={fed.get('address')!r}: must be HOST:PORT of the SuperLink")
    if not isinstance(fed.get("insecure"), bool):
        out.append(f"federation.insecure={fed.get('insecure')!r}: must be true or false")
    elif not fed["insecure"]:
        cert = Path(str(fed.get("root_certificates") or ""))
        if not fed.get("root_certificates") or not cert.is_file():
            out.append(
                f"federation.root_certificates={fed.get('root_certificates')!r}: must be the lab CA certificate "
                "file (make one with `fedconv certs`), or set federation.insecure=true for loopback tests"
            )
    keys = fed.get("supernode_keys") or ""
    if keys and not sorted(Path(str(keys)).glob("*.pub")):
        out.append(f"federation.supernode_keys={keys!r}: must be a folder holding the SuperNodes' *.pub keys, or \"\"")
    n = fed.get("num_supernodes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        out.append(f"federation.num_supernodes={n!r}: must be an integer >= 1")
    if not isinstance(fed.get("stream_logs"), bool):
        out.append(f"federation.stream_logs={fed.get('stream_logs')!r}: must be true or false")
    return out


def resolve(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The validated plain config; ``simulation.num_clients`` becomes the SuperNode count."""
    hc = HydraConfig.get()
    problems = unknown_keys(plain(cfg, resolve=False), dict(hc.runtime.choices), "deploy")
    resolved = plain(cfg)
    if resolved.get("mode") not in MODES:
        problems.append(f"mode={resolved.get('mode')!r}: must be one of {', '.join(MODES)}")
    fed = resolved["federation"]
    for key in ("root_certificates", "supernode_keys"):
        if fed.get(key):
            fed[key] = str(Path(str(fed[key])).expanduser().resolve())
    problems += _problems(fed)
    if isinstance(fed.get("num_supernodes"), int):
        resolved["simulation"]["num_clients"] = fed["num_supernodes"]
    resolved["simulation"]["nodes"] = "per_client"  # devices own their data; the server asks them
    try:
        validate(resolved)
    except ConfigError as exc:
        problems += str(exc).splitlines()
    if problems:
        raise ConfigError("\n".join(problems))
    resolved["output_dir"] = str(out)  # client.threads stays as set: 0 = every core of each board
    tracking.absolute_tracking_uri(resolved)
    return resolved


def superlink_problem(address: str, root_certificates: str | None, timeout: float = 5.0) -> str | None:
    """Why nothing usable answers at ``address`` (refused, timed out, TLS verification
    failed), or None. ``flwr run`` retries for about 40 s and then names no cause."""
    import socket
    import ssl

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except TimeoutError:
        return f"timed out after {timeout:.0f} s"
    except OSError as exc:
        return (exc.strerror or type(exc).__name__).lower()
    with sock:
        if root_certificates is None:
            return None
        context = ssl.create_default_context(cafile=root_certificates)
        context.set_alpn_protocols(["h2"])  # what gRPC offers
        try:
            with context.wrap_socket(sock, server_hostname=host):
                return None
        except ssl.SSLCertVerificationError as exc:
            return f"TLS verification failed: {exc.verify_message}"
        except (ssl.SSLError, OSError) as exc:
            return f"TLS handshake failed: {exc}"


def write_connection(flwr_home: Path, fed: Mapping[str, Any]) -> None:
    """The Flower CLI's SuperLink connection for this federation (``$FLWR_HOME/config.toml``)."""
    conn: dict[str, Any] = {"address": str(fed["address"])}
    if fed["insecure"]:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(fed["root_certificates"])
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))


def public_key_problem(keys_dir: Path) -> str | None:
    """Why the SuperNode keys in ``keys_dir`` cannot be registered (None: they can): the
    folder is missing or holds no ``*.pub``, or a file is not an OpenSSH EC public key."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    key_name = "federation.supernode_keys"
    if not keys_dir.is_dir():
        return f"{key_name}={keys_dir}: no such folder"
    keys = sorted(keys_dir.glob("*.pub"))
    if not keys:
        return f"{key_name}={keys_dir}: holds no *.pub key (fedconv certs OUT --supernodes N makes them)"
    for key in keys:
        try:
            public = load_ssh_public_key(key.read_bytes())
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            return f"{key_name}: {key} is not an OpenSSH public key ({exc})"
        if not isinstance(public, ec.EllipticCurvePublicKey):
            return f"{key_name}: {key} is a {type(public).__name__}; SuperNodes authenticate with EC keys (fedconv.edge.certs)"
    return None


def register_supernodes(keys_dir: Path, env: Mapping[str, str]) -> list[str]:
    """Register every ``*.pub`` in ``keys_dir`` (already registered keys are fine)."""
    lines = []
    for key in sorted(keys_dir.glob("*.pub")):
        proc = subprocess.run(["flwr", "supernode", "register", str(key), CONNECTION, "--format", "json"],
                              capture_output=True, text=True, env=dict(env), timeout=120)
        text = proc.stdout + proc.stderr
        if proc.returncode == 0 and '"success": true' in text:
            node = re.search(r'"node-id":\s*(\d+)', text)
            lines.append(f"registered {key.name} as SuperNode {node.group(1) if node else '?'}")
        elif "already in use" in text:
            lines.append(f"{key.name} was registered already")
        else:
            raise RuntimeError(f"registering {key} failed: {' '.join(text.split())[-500:]}")
    return lines


def start_run(app_dir: Path, env: Mapping[str, str], echo: bool) -> tuple[int, str | None]:
    """``flwr run --stream`` the one-run app (it returns when the run ends); echo the log
    stream when asked; return (exit code, run id)."""
    cmd = ["flwr", "run", str(app_dir), CONNECTION, "--stream"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env))
    run_id = None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if run_id is None and (m := re.search(r"Successfully started run (\d+)", line)):
                run_id = m.group(1)
            if echo or run_id is None or line.startswith(("[round", "done:", "    client failure", "resuming")):
                print(line, end="", flush=True)
        return proc.wait(), run_id
    except KeyboardInterrupt:
        if run_id is not None:  # stop the run on the SuperLink too, not just our log stream
            subprocess.run(["flwr", "stop", run_id, CONNECTION], env=dict(env), capture_output=True, timeout=60)
        proc.terminate()
        raise


def wait_for_summary(out: Path, timeout: float = 30.0) -> dict[str, Any] | None:
    """The ServerApp writes summary.json last; the log stream may end a moment before."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / run_dir.SUMMARY).exists():
            try:
                return run_dir.read_summary(out / run_dir.SUMMARY)
            except run_dir.RunDirError:  # written a moment ago, or damaged: read it again
                pass
        time.sleep(0.5)
    return None


def _refuse(out: Path, message: str, code: int = EXIT_BAD_CONFIG) -> NoReturn:
    """One line on stderr and the exit code; an output folder this command made and left empty goes."""
    run_dir.discard_if_empty(out)
    print(message, file=sys.stderr)
    sys.exit(code)


def _checked(cfg: DictConfig, out: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The resolved run config, the federation and the mode, or one line and exit 2: every
    check that needs no SuperLink (the config, the SuperNode keys, the dataset, the output)."""
    try:
        resolved = resolve(cfg, out)
    except ConfigError as exc:
        _refuse(out, f"config error: {exc}")
    fed = resolved.pop("federation")
    mode = resolved.pop("mode")
    if fed["supernode_keys"] and (problem := public_key_problem(Path(fed["supernode_keys"]))):
        _refuse(out, f"config error: {problem}")
    if fed["insecure"]:
        print("WARNING: federation.insecure=true: TLS is off, model updates travel in clear text and "
              "SuperNodes are not authenticated. Use it on loopback only.", file=sys.stderr, flush=True)
    if mode == "run":
        try:
            task.dataset(resolved)
        except DatasetError as exc:
            _refuse(out, f"error: {exc} (the ServerApp evaluates on its test set on the SuperLink's machine; "
                         "run this launcher there)")
        if run_dir.existing_run(out) != "none":
            print(f"config error: output_dir={out}: already holds a run; choose another", file=sys.stderr)
            sys.exit(EXIT_BAD_CONFIG)
    return resolved, fed, mode


def _failed(out: Path, code: int, run_id: Any, summary: dict[str, Any] | None, rounds: int) -> NoReturn:
    """A deployed run that did not complete: say so, and leave a ``failed`` summary where the
    ServerApp wrote none."""
    status = summary.get("status") if summary else "no summary.json"
    print(f"deploy failed: flwr run exited {code}, run {run_id}, status {status}", file=sys.stderr)
    if summary is None:
        done = run_dir.complete_rounds(out / run_dir.ROUNDS, rounds)
        run_dir.write_json(out / run_dir.SUMMARY, {"status": "failed", "error": f"flwr run exited {code}",
                                                   "run_id": run_id, "rounds_completed": done})
    sys.exit(1)


def run(cfg: DictConfig) -> dict[str, Any] | None:
    global _TASK_STARTED
    _TASK_STARTED = True
    out = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir).resolve()
    resolved, fed, mode = _checked(cfg, out)
    problem = superlink_problem(str(fed["address"]), None if fed["insecure"] else str(fed["root_certificates"]))
    if problem:
        _refuse(out, f"error: no SuperLink at {fed['address']} ({problem})")
    with tempfile.TemporaryDirectory(prefix="fedconv-deploy-") as tmp:
        flwr_home = Path(tmp) / "flwr-home"
        env = flwr_env(flwr_home)
        write_connection(flwr_home, fed)
        if fed["supernode_keys"]:
            try:
                for line in register_supernodes(Path(fed["supernode_keys"]), env):
                    print(line, flush=True)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                _refuse(out, f"error: {exc}", code=1)
        if mode == "register":
            run_dir.discard_if_empty(out)
            return None
        out.mkdir(parents=True, exist_ok=True)
        run_dir.write_config(out, {**resolved, "federation": fed})
        app_dir = Path(tmp) / "app"
        app_dir.mkdir()
        write_app_dir(app_dir, to_run_config(resolved))
        print(f"fedconv deploy -> {out} on SuperLink {fed['address']} ({fed['num_supernodes']} SuperNodes)", flush=True)
        code, run_id = start_run(app_dir, env, bool(fed["stream_logs"]))
    summary = wait_for_summary(out)
    if code != 0 or summary is None or summary.get("status") != "completed":
        _failed(out, code, run_id, summary, Server.of(resolved).rounds)
    return summary


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="deploy")
def main(cfg: DictConfig) -> None:
    """One deployment; the launcher holds its run dir for the run's life, as a simulation does
    (the ServerApp under the SuperLink writes into it; a second launcher is refused)."""
    out = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir).resolve()
    try:
        lock = run_dir.hold(out)
    except run_dir.RunDirHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    except OSError as exc:
        print(f"config error: output_dir={out}: cannot write there ({exc.strerror or exc})", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    try:
        run(cfg)
    finally:
        lock.release()


def cli() -> None:
    """Entry point: Hydra's own config errors exit 2 like fedconv's."""
    config_errors_exit_2(main, lambda: _TASK_STARTED)


if __name__ == "__main__":
    cli()
