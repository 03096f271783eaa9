"""``fedconv <command> [arguments]``: one console command for every entry point.

Each command is the module's own entry point (``fedconv simulate ...`` is exactly
``python -m fedconv.simulate ...``, Hydra overrides and exit codes included); this file
only dispatches.
"""

from __future__ import annotations

import runpy
import sys

from fedconv.optional import MissingExtra

COMMANDS = {
    "simulate": ("fedconv.simulate", "run a simulation or a sweep (Hydra overrides, -m)"),
    "report": ("fedconv.runs.report", "compare runs: tables and plots"),
    "deploy": ("fedconv.edge.deploy", "run on real SuperNodes through a SuperLink"),
    "certs": ("fedconv.edge.certs", "make a lab's CA, SuperLink certificate and SuperNode keys"),
    "device-data": ("fedconv.edge.board_data", "write one data folder per board"),
    "inspect": ("fedconv.inspect_run", "pictures of a run's model: filters, feature maps, confusion matrix"),
    "export": ("fedconv.edge.export", "export a run's model (TorchScript, ONNX, int8) and measure it"),
    "partitions": ("fedconv.partition_stats", "print and save partition statistics"),
    "models": ("fedconv.learning.models", "print the layer table of every model"),
    "bench": ("fedconv.bench", "benchmark against the plain-PyTorch compute limit"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: fedconv <command> [arguments]   (fedconv <command> --help for its own)", "", "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    name = sys.argv[1]
    if name not in COMMANDS:
        print(f"fedconv: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module, _ = COMMANDS[name]
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    # As `python -m <module>` runs it: Hydra finds conf/ relative to a module run as __main__.
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except ModuleNotFoundError as exc:  # a lean (board) install: name the extra, not a traceback
        from fedconv.optional import missing_extra_message

        if isinstance(exc, MissingExtra):
            message: str | None = f"fedconv {name}: {exc}"
        else:
            message = missing_extra_message(exc.name or "", f"fedconv {name}")
        if message is None:
            raise
        print(message, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
