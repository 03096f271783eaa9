"""The ServerApp's message exchange outside a simulation: Flower's loop, polled faster."""

from __future__ import annotations

from types import SimpleNamespace

from flwr.app import Message, RecordDict
from test_strategies import task_identity  # noqa: F401  (autouse fixture)

from fedconv.federation import stopping


class SlowGrid:
    """A grid whose replies arrive at the ``ready_after``-th pull (``None``: never)."""

    def __init__(self, ready_after: int | None) -> None:
        self.ready_after = ready_after
        self.pulls = 0
        self.sent: list[Message] = []

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.sent = list(messages)
        return [f"id-{i}" for i in range(len(self.sent))]

    def pull_messages(self, ids: set[str]) -> list[SimpleNamespace]:
        """Replies as the exchange reads them: by the id of the message they answer."""
        self.pulls += 1
        if self.ready_after is None or self.pulls < self.ready_after:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in sorted(ids)]


def _messages(n: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=i + 1, message_type="train") for i in range(n)]


def test_a_deployed_exchange_pulls_every_quarter_second_until_every_reply_is_in(monkeypatch) -> None:  # noqa: ANN001
    sleeps: list[float] = []
    monkeypatch.setattr(stopping.time, "sleep", sleeps.append)
    grid = SlowGrid(ready_after=3)
    replies = stopping.send_and_receive(grid, _messages(2), timeout=60)  # type: ignore[arg-type]
    assert len(replies) == 2 and grid.pulls == 3
    assert sleeps == [stopping.DEPLOYED_POLL_SECONDS] * 2 and stopping.DEPLOYED_POLL_SECONDS <= 0.5


def test_a_deployed_exchange_gives_up_at_the_timeout_with_the_replies_it_has() -> None:
    grid = SlowGrid(ready_after=None)
    assert stopping.send_and_receive(grid, _messages(1), timeout=0.6) == []  # type: ignore[arg-type]
    assert 2 <= grid.pulls <= 4  # about one pull per DEPLOYED_POLL_SECONDS, not one per 3 s
