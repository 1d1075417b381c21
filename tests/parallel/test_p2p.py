"""Shared-memory mailboxes between pipeline stages: delivery, bounded waits, bad messages.

Both ends live in this process (a stand-in communicator gives rank, timeout and the abort
flag), so the waits are checked without starting processes; tests/train/test_pipeline.py
runs them between real stage processes.
"""
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from minscale.parallel import CommAbortedError, CommTimeoutError
from minscale.parallel.p2p import SharedMemoryLinks, SharedMemoryMailboxes


@dataclass
class FakeComm:
    rank: int
    timeout: float = 5.0
    aborted: bool = False


def _pair(capacity=64, slots=2, timeout=5.0):
    boxes = SharedMemoryMailboxes([capacity], slots)
    comms = [FakeComm(0, timeout), FakeComm(1, timeout)]
    links = [SharedMemoryLinks(boxes.specs, c, os.getpid()) for c in comms]
    return boxes, comms, links


def test_messages_arrive_exactly_in_both_directions_per_slot():
    boxes, _, (a, b) = _pair()
    with boxes:
        x = np.array([[1.5, -0.0], [np.pi, 1e-300]])
        a.send(x, 1, slot=1, tag=7)
        a.send(x[:1] * 2, 1, slot=0, tag=7)
        first = b.recv(np.empty((1, 2)), 0, slot=0, tag=7)
        second = b.recv(np.empty((2, 2)), 0, slot=1, tag=7)
        np.testing.assert_array_equal(first, x[:1] * 2)
        assert second.tobytes() == x.tobytes()  # bit for bit, the sign of -0.0 included
        b.send(np.float32([3.0]), 0, slot=0, tag=8)
        assert a.recv(np.empty(1, np.float32), 1, slot=0, tag=8)[0] == 3.0
        empty = np.empty((0, 2))
        a.send(empty, 1, slot=0, tag=9)
        assert b.recv(np.empty((0, 2)), 0, slot=0, tag=9).shape == (0, 2)
        for link in (a, b):
            link.close()


def test_a_missing_message_times_out_and_an_abort_ends_the_wait_at_once():
    boxes, comms, (a, b) = _pair(timeout=0.3)
    with boxes:
        start = time.monotonic()
        with pytest.raises(CommTimeoutError, match="stage 1: the message from stage 0"):
            b.recv(np.empty(2), 0, slot=0, tag=1)
        assert 0.3 <= time.monotonic() - start < 2
        comms[1].aborted = True
        start = time.monotonic()
        with pytest.raises(CommAbortedError, match="group aborted"):
            b.recv(np.empty(2), 0, slot=0, tag=1)
        assert time.monotonic() - start < 0.5
        # an old tag in the slot is not the message waited for
        a.send(np.ones(2), 1, slot=0, tag=1)
        comms[1].aborted = False
        with pytest.raises(CommTimeoutError):
            b.recv(np.empty(2), 0, slot=0, tag=2)
        b.reset()
        with pytest.raises(CommTimeoutError):
            b.recv(np.empty(2), 0, slot=0, tag=1)


def test_wrong_sizes_and_non_neighbours_are_refused():
    boxes, _, (a, b) = _pair(capacity=16)
    with boxes:
        with pytest.raises(ValueError, match="does not fit the mailbox"):
            a.send(np.ones(3), 1, slot=0, tag=1)
        a.send(np.ones(2), 1, slot=0, tag=1)
        with pytest.raises(ValueError, match="has 16 bytes, expected 8"):
            b.recv(np.empty(1), 0, slot=0, tag=1)
        with pytest.raises(ValueError, match="no mailbox from stage 0 to stage 2"):
            a.send(np.ones(1), 2, slot=0, tag=1)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="POSIX shared memory in /dev/shm (Linux)")
def test_closing_the_mailboxes_unlinks_every_segment():
    boxes, _, links = _pair()
    names = [spec.name for pair in boxes.specs.values() for spec in pair]
    assert len(names) == 4 and all(Path("/dev/shm", n).exists() for n in names)
    for link in links:
        link.close()
    boxes.close()
    assert not any(Path("/dev/shm", n).exists() for n in names)
