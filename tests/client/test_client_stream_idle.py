"""The gRPC stream session keeps a group submitted while the stream was idle.

A session waits up to ``idle_s`` for the next answer while nothing is pending, then closes
its stream. A group submitted during that wait was written to the stream, but the wait
still ran with the idle timeout: when the group took longer than the rest of it, the
session closed the stream with the group unanswered, and the new stream it opened did
not send the group again. The group was then answered only after the client's own
timeout (``timeout_s``) made it send it again: the unanswered stream submission under
load of issue 18 (any group slower than the idle time left, 10 s by default)."""

from __future__ import annotations

import functools
import threading
import time
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from divreward.client import Group, RetryPolicy, RewardClient
from divreward.client import client as client_module
from divreward.client._stream import StreamSession
from divreward.proto import divreward_pb2_grpc as pb_grpc
from divreward.proto.convert import from_proto, to_proto
from divreward.schema_stream import GroupSubmission, GroupSubmissionResult

IDLE_S = 0.3
SLOW_S = 1.0  # the second group's compute time: longer than the idle time left
TIMEOUT_S = 6.0  # the client's timeout: a resend would show as an answer after it


class _SlowSecondGroup(pb_grpc.RewardServiceServicer):
    """Answers each submission; the second one only after SLOW_S. Records every
    submission (request id) and how many streams were opened."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.streams = 0
        self.lock = threading.Lock()

    def RewardStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.lock:
            self.streams += 1
        for message in request_iterator:
            sub = from_proto(message, GroupSubmission)
            with self.lock:
                self.seen.append(sub.request_id or "")
                n = len(self.seen)
            if n == 2:
                time.sleep(SLOW_S)
            yield to_proto(
                GroupSubmissionResult(
                    group_id=sub.group_id,
                    request_id=sub.request_id,
                    rewards=[1.0] * len(sub.images),
                )
            )


@pytest.fixture
def slow_server() -> Any:
    servicer = _SlowSecondGroup()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RewardServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"grpc://127.0.0.1:{port}"
    server.stop(0)


def test_a_group_submitted_while_the_stream_idles_is_answered_on_it(
    slow_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, url = slow_server
    monkeypatch.setattr(
        client_module, "StreamSession", functools.partial(StreamSession, idle_s=IDLE_S)
    )
    images = np.zeros((2, 8, 8, 3), np.uint8)
    retry = RetryPolicy(max_attempts=3, backoff_s=0.0, max_backoff_s=0.0, jitter=0.0)
    with RewardClient(url, retry=retry, timeout_s=TIMEOUT_S, downsize=False) as c:
        assert c.submit(Group("p", images, group_id="a"), request_id="rid-a").result(10)
        time.sleep(IDLE_S / 3)  # the session now waits for an answer with the idle timeout
        t0 = time.monotonic()
        b = c.submit(Group("p", images, group_id="b"), request_id="rid-b").result(30)
        elapsed = time.monotonic() - t0
    assert b.rewards == [1.0, 1.0]
    # Answered when the server finished it, on the stream it was sent on: not after the
    # client's timeout, and sent once (a resend would show in `seen`).
    assert SLOW_S < elapsed < TIMEOUT_S, elapsed
    assert servicer.seen == ["rid-a", "rid-b"]
    assert servicer.streams == 1
