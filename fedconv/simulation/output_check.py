"""A Hydra callback that refuses an output location nothing can be written to, before Hydra makes it.

Hydra creates ``hydra.run.dir`` / ``hydra.sweep.dir`` itself, between composing the config
and calling the task, and reports a failure as a traceback naming no key. This callback
(``hydra.callbacks`` in ``conf/config.yaml``) runs just before that: it tries to create the
folder and a file in it, and on failure prints one line naming the key and the path and
exits 2, leaving nothing behind. fedconv's own ``output_dir`` is checked the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fedconv.atomic import unwritable
from fedconv.config import EXIT_BAD_CONFIG

__all__ = ["OutputDirCheck", "check", "unwritable"]


def check(config: DictConfig, dir_key: str) -> None:
    for key in (dir_key, "output_dir"):
        value: Any = OmegaConf.select(config, key)
        if not value or (key == "output_dir" and OmegaConf.select(config, "resume")):
            continue
        reason = unwritable(Path(str(value)).expanduser())
        if reason:
            print(f"config error: {key}={value}: cannot write a run there ({reason}); choose a writable folder",
                  file=sys.stderr)
            sys.exit(EXIT_BAD_CONFIG)


class OutputDirCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check(config, "hydra.sweep.dir")
