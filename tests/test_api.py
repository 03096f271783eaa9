"""fedconv.api in process: what it refuses before starting anything, and how it turns the
command's error output into one line per reason (the runs themselves: tests/test_simulation.py)."""

from __future__ import annotations

import pytest

from fedconv import api

HYDRA_UNKNOWN_OPTION = """In 'config': Could not find 'dataset/nosuch'

Available options in 'dataset':
\tcifar10
\tdigits
Config search path:
\tprovider=hydra, path=pkg://hydra.conf
\tprovider=main, path=file:///repo/conf

Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.
"""


def test_the_commands_error_output_becomes_one_line_per_reason() -> None:
    assert api._reasons("config error: client.lr=-1: must be in (0, inf)\nserver.rounds=0: must be in [1, inf)\n") == [
        "client.lr=-1: must be in (0, inf)", "server.rounds=0: must be in [1, inf)"]
    assert api._reasons(HYDRA_UNKNOWN_OPTION) == [
        "In 'config': Could not find 'dataset/nosuch'; available options in 'dataset': cifar10, digits"]
    assert api._reasons("error: --out x: cannot write there\n") == ["--out x: cannot write there"]


@pytest.mark.parametrize("overrides,error", [
    (["-m", "seed=0,1"], api.ConfigError),
    ("dataset=digits", TypeError),  # one string, not a list: would run with each character
])
def test_what_api_run_refuses_before_starting_a_process(overrides: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        api.run(overrides)  # type: ignore[arg-type]  # the wrong types are the point
