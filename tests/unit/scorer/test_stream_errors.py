"""Fatal client errors, and the scorer's bounded waits (the committer thread, closing a client)."""

from __future__ import annotations

import functools
import threading
import time

import pytest
from confluent_kafka import KafkaError

from scorer.settings import ScorerSettings
from scorer.stream import (
    CALL_MARGIN_S,
    EXIT_FATAL,
    EXIT_INFRA,
    EXIT_STALLED,
    Committer,
    Delivery,
    FatalClientError,
    InfraGiveUpError,
    StalledError,
    StreamScorer,
    bounded,
    is_fatal,
)


@pytest.mark.parametrize(
    "error",
    [
        KafkaError(
            KafkaError.FENCED_INSTANCE_ID, "Static consumer fenced by other consumer with same group.instance.id"
        ),
        KafkaError(KafkaError._FENCED, "fenced"),
        KafkaError(KafkaError._FATAL, "fatal"),
        KafkaError(KafkaError.PRODUCER_FENCED, "producer fenced"),
        KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not allowed"),
        KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, "epoch", fatal=True),  # librdkafka's own flag decides
    ],
)
def test_fatal_errors(error: KafkaError) -> None:
    assert is_fatal(error)


@pytest.mark.parametrize(
    "error",
    [
        KafkaError(KafkaError._TRANSPORT, "broker down"),
        KafkaError(KafkaError._ALL_BROKERS_DOWN, "all brokers down"),
        KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True),
        KafkaError(KafkaError._MAX_POLL_EXCEEDED, "left the group; rejoins on the next poll"),
        KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, "abortable", txn_requires_abort=True),
        KafkaError(KafkaError._PARTITION_EOF, "eof"),
    ],
)
def test_recoverable_errors(error: KafkaError) -> None:
    assert not is_fatal(error)


def test_each_exit_names_its_code_and_its_cause() -> None:
    fenced = FatalClientError("consumer", KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced by another"))
    assert fenced.exit_code == EXIT_FATAL == 4
    assert "FENCED_INSTANCE_ID" in str(fenced) and "fenced by another" in str(fenced)
    assert InfraGiveUpError("the broker", 61, "down").exit_code == EXIT_INFRA == 3
    assert StalledError("no progress").exit_code == EXIT_STALLED == 5


def test_the_committer_runs_calls_in_order_and_hands_back_results_and_errors() -> None:
    committer = Committer("test-commit")
    seen: list[int] = []

    def call(i: int) -> int:
        seen.append(i)
        return i

    futures = [committer.submit(functools.partial(call, i)) for i in range(5)]
    failing = committer.submit(lambda: 1 / 0)
    assert [f.result(5) for f in futures] == [0, 1, 2, 3, 4] and seen == [0, 1, 2, 3, 4]
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert committer.shutdown(5)


def test_a_stuck_committer_does_not_hold_the_process() -> None:
    release = threading.Event()
    committer = Committer("test-stuck")
    future = committer.submit(release.wait)
    assert not committer.shutdown(0.2)  # left behind, and a daemon: the interpreter does not wait for it
    assert not future.done()
    assert all(t.daemon for t in threading.enumerate() if t.name == "test-stuck")
    release.set()


def test_bounded_gives_up_on_a_call_that_does_not_return() -> None:
    release = threading.Event()
    started = time.monotonic()
    assert not bounded("closing a client", release.wait, 0.2)
    assert time.monotonic() - started < 5
    release.set()
    assert bounded("a quick call", lambda: None, 5)
    assert bounded("a failing call", lambda: 1 / 0, 5)  # logged, not raised


def test_waiting_on_a_committer_call_stuck_past_its_own_timeout_ends_in_a_stall_exit() -> None:
    """librdkafka's send_offsets_to_transaction, given 30 s, did not return for minutes after a broker SIGKILL +
    restart (the fault campaign): the loop must not wait the whole give-up patience on it."""
    scorer = object.__new__(StreamScorer)  # the waiting logic alone: no clients
    scorer.settings = ScorerSettings(kafka_timeout_s=0.2, give_up_after_s=600.0)
    scorer._timeout_s = 0.2
    scorer.last_iteration = 0.0
    release = threading.Event()
    committer = Committer("test-stuck-call")

    def stuck_call() -> Delivery:
        with scorer._client_call():
            release.wait(30)
        raise AssertionError("released")

    scorer._call_since = None
    future = committer.submit(stuck_call)
    started = time.monotonic()
    with pytest.raises(StalledError, match="past its own"):
        scorer._wait(future)
    assert time.monotonic() - started < 0.2 + CALL_MARGIN_S + 3, "bounded by the call's timeout, not the patience"
    assert scorer.last_iteration > 0, "the loop beat while it waited"
    release.set()
