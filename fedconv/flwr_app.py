"""The ServerApp ``flwr run .`` starts (pyproject.toml's ``[tool.flwr.app.components]``).

``flwr run .`` hands the apps pyproject's ``[tool.flwr.app.config]`` (the default
composition, flattened) with the user's ``--run-config`` values on top.
:func:`fedconv.config.from_run_config` composes that as ``python -m fedconv.simulate`` would
(a changed ``"dataset.name"`` chooses ``dataset=<name>``); this app then checks it with the
command's checks before anything starts, so a bad value fails the run (``finished:failed``)
with one line per problem (the key and what is allowed) before any round, and runs fedconv's
ServerApp otherwise. The
ClientApp is fedconv's as in deployment (:mod:`fedconv.edge.board_app`): it composes the same
config from the same run config.

Runs that fedconv itself launches (``simulate``, ``deploy``) carry a composed, checked config
(``output_dir`` set) and go through the same code unchanged.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedconv import validation
from fedconv.config import ConfigError, from_run_config
from fedconv.federation import server_app

app = ServerApp()


def config_problems(context: Context) -> list[str]:
    """Why this run config cannot run, one line each (none: it can)."""
    try:
        cfg = from_run_config(context.run_config)
    except ConfigError as exc:
        return [str(exc)]
    return validation.problems(cfg)


@app.main()
def main(grid: Grid, context: Context) -> None:
    problems = config_problems(context)
    if problems:
        for line in problems:
            print(f"config error: {line}", flush=True)
        print("config error: nothing ran; fix the --run-config values above (keys as in "
              "pyproject.toml's [tool.flwr.app.config])", flush=True)
        # Flower marks the run finished:failed with this message (and logs where it was raised)
        raise ConfigError("; ".join(problems))
    server_app.main(grid, context)
