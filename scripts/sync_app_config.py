"""Rewrite pyproject.toml's [tool.flwr.app.config] from conf/ (the default composition).

Run after changing a default in conf/: `.venv/bin/python scripts/sync_app_config.py`
(tests/test_config.py fails while the two disagree).
"""

from __future__ import annotations

import re
from pathlib import Path

import tomli_w

from fedconv.config import compose, to_run_config

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def main() -> None:
    text = PYPROJECT.read_text()
    table = tomli_w.dumps({"tool": {"flwr": {"app": {"config": to_run_config(compose([]))}}}})
    body = table.split("[tool.flwr.app.config]\n", 1)[1]
    new = re.sub(r"(\[tool\.flwr\.app\.config\]\n)(.*?)(\n\[)", lambda m: m.group(1) + body + m.group(3), text, flags=re.S)
    PYPROJECT.write_text(new)


if __name__ == "__main__":
    main()
