"""A changelog created a moment ago: the restore waits for the client to learn of it instead of stopping."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from passerelle.streams.runtime.runner import _watermarks

pytestmark = pytest.mark.unit


class Client:
    """A consumer whose metadata learns of the topic after ``unknown`` answers."""

    def __init__(self, unknown: int, code: int = KafkaError._UNKNOWN_PARTITION) -> None:
        self.unknown, self.code, self.refreshed = unknown, code, 0

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        assert cached is False  # the broker's answer, not a cached one
        if self.unknown:
            self.unknown -= 1
            raise KafkaException(KafkaError(self.code, "Failed to get watermark offsets: Local: Unknown partition"))
        return 0, 7

    def list_topics(self, topic: str, timeout: float) -> None:
        self.refreshed += 1


def test_an_unknown_partition_is_asked_again_after_a_metadata_refresh() -> None:
    client = Client(unknown=3)
    assert _watermarks(client, "app-visitors-changelog", 2) == (0, 7)
    assert client.refreshed == 3


def test_it_gives_up_after_its_patience() -> None:
    with pytest.raises(KafkaException):
        _watermarks(Client(unknown=10**6), "t", 0, patience_s=0.3)


def test_other_errors_are_not_retried() -> None:
    client = Client(unknown=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        _watermarks(client, "t", 0)
    assert client.refreshed == 0
