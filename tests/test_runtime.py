"""The runtime's hooks into Flower's simulation engine (fedconv/simulation/runtime.py), in process."""

import time
from queue import Empty

import pytest
from flwr.server.superlink.fleet.vce import vce_api

from fedconv.simulation import runtime


def test_the_engine_sees_its_stop_flag_promptly_and_gets_its_own_queue_back() -> None:
    """Flower's workers wait on ``queue.get(timeout=1.0)`` between looks at the stop flag; under
    ``prompt_stop`` an empty queue answers within a slice, a full one at once, in order."""
    original = vce_api.Queue
    with runtime.prompt_stop():
        queue = vce_api.Queue()
        assert isinstance(queue, original)
        t0 = time.monotonic()
        with pytest.raises(Empty):
            queue.get(timeout=1.0)
        assert time.monotonic() - t0 < 0.5  # a 0.05 s slice; Flower's own queue takes the whole 1.0 s
        queue.put("a")
        queue.put("b")
        assert [queue.get(timeout=1.0), queue.get()] == ["a", "b"]
    assert vce_api.Queue is original
