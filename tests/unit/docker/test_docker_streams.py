"""Faults the real daemon cannot produce on demand: in-band pull errors, a hung event stream,
a daemon that accepts the event request and never answers."""

from __future__ import annotations

import threading
import time

import pytest
from fakedockerd import HANG, FakeDockerd

from drivers.docker import events, images, spec
from drivers.docker.connection import Engine
from drivers.docker.events import EventWatcher
from virt.errors import ImageError, ImageNotFound
from virt.events import Transition
from virt.model import PowerState


def test_pull_stream_error_inside_200_ok_raises():
    seen = []
    stream = [
        {"status": "Pulling from library/app", "id": "1"},
        {"status": "Downloading", "progressDetail": {"current": 10, "total": 100}},
        {"errorDetail": {"message": "unexpected EOF"}, "error": "unexpected EOF"},
        {"status": "never read"},
    ]
    with pytest.raises(ImageError, match="unexpected EOF"):
        images.drain_pull_stream("app:1", iter(stream), deadline=time.monotonic() + 10,
                                 progress=seen.append)
    assert len(seen) == 2  # progress reached the caller until the error


def test_pull_stream_missing_image_is_image_not_found():
    stream = [{"error": "manifest for app:9 not found: manifest unknown"}]
    with pytest.raises(ImageNotFound, match="app:9"):
        images.drain_pull_stream("app:9", iter(stream), deadline=time.monotonic() + 10,
                                 progress=None)


def test_pull_stream_is_read_to_the_end():
    consumed = []

    def stream():
        for i in range(5):
            consumed.append(i)
            yield {"status": f"layer {i}"}

    images.drain_pull_stream("app", stream(), deadline=time.monotonic() + 10, progress=None)
    assert consumed == [0, 1, 2, 3, 4]


def test_split_reference():
    assert images.split_reference("busybox") == ("busybox", "latest")
    assert images.split_reference("reg:5000/a/b:1") == ("reg:5000/a/b", "1")
    assert images.split_reference("a@sha256:abc") == ("a@sha256:abc", None)


class HungStream:
    """An event stream that never yields and never ends until closed (DK-4)."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __iter__(self):
        self.closed.wait(30)
        return iter(())

    def close(self) -> None:
        self.closed.set()


class FakeApi:
    """Only what the watcher calls; `events` hangs the first time."""

    def __init__(self) -> None:
        self.streams: list[HungStream] = []
        self.listing = {"u1": PowerState.RUNNING}

    def events(self, **_kwargs):
        stream = HungStream()
        self.streams.append(stream)
        return stream


class FakeEngine:
    timeout = 0.3

    def __init__(self) -> None:
        self.api = FakeApi()


def test_hung_event_stream_is_cut_and_followed_by_a_resync(monkeypatch):
    engine = FakeEngine()
    monkeypatch.setattr(events, "open_stream", lambda api, **kwargs: api.events(**kwargs))
    emitted = []
    watcher = EventWatcher(
        engine, host="h", list_states=lambda: dict(engine.api.listing),
        emit=emitted.append, window=0.2, resync_interval=3600,
    )
    watcher.start()
    try:
        assert watcher.synced.wait(5)
        engine.api.listing = {"u1": PowerState.SHUTDOWN, "u2": PowerState.RUNNING}
        deadline = time.monotonic() + 10
        while len(emitted) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The watchdog closed the hung window; the resync emitted what changed meanwhile.
        assert engine.api.streams[0].closed.is_set()
        assert [(e.instance_uuid, e.transition) for e in emitted] == [
            ("u1", Transition.STOPPED), ("u2", Transition.STARTED)
        ]
    finally:
        watcher.stop(timeout=5)
    assert not watcher.running


def test_event_request_never_answered_is_bounded_and_stop_is_prompt(daemon_socket):
    with FakeDockerd(daemon_socket, {("GET", "/events"): lambda _q, _b: HANG}) as daemon:
        engine = Engine(daemon.url, "1.41", timeout=0.5)
        watcher = EventWatcher(engine, host="h", list_states=dict, emit=lambda _e: None,
                               window=0.2, resync_interval=3600)
        watcher.start()
        try:
            assert watcher.synced.wait(5)
            deadline = time.monotonic() + 5
            while not daemon.calls("GET", "/events") and time.monotonic() < deadline:
                time.sleep(0.02)
            (query, _body), *_ = daemon.calls("GET", "/events")
            assert "until" in query and "filters" in query
        finally:
            started = time.monotonic()
            watcher.stop(timeout=5)
            stopped_in = time.monotonic() - started
            engine.close()
    # The unanswered request ended by its read timeout (window + call timeout), not stop's.
    assert not watcher.running
    assert stopped_in < 2.0


def test_events_map_to_transitions_and_duplicates_are_dropped():
    emitted = []
    watcher = EventWatcher(FakeEngine(), host="h", list_states=dict, emit=emitted.append)

    def event(action, nano, **attrs):
        return {"Action": action, "timeNano": nano,
                "Actor": {"ID": "c1", "Attributes": {spec.LABEL_UUID: "u1", **attrs}}}

    for e in [event("start", 1), event("start", 1), event("pause", 2), event("unpause", 3),
              event("oom", 4), event("die", 5, exitCode="137"), event("start", 6),
              event("die", 7, exitCode="143"), event("destroy", 8), event("exec_start", 9)]:
        watcher.handle(e)
    assert [e.transition for e in emitted] == [
        Transition.STARTED, Transition.PAUSED, Transition.RESUMED, Transition.CRASHED,
        Transition.STARTED, Transition.STOPPED,
    ]


def test_die_event_asks_the_driver_for_the_exit_state():
    emitted, asked, removed = [], [], []

    def exit_state(cid, code, oom):
        asked.append((cid, code, oom))
        return PowerState.SHUTDOWN if cid == "mine" else PowerState.CRASHED

    watcher = EventWatcher(FakeEngine(), host="h", list_states=dict, emit=emitted.append,
                           exit_state=exit_state, removed=removed.append)
    for n, (cid, action) in enumerate([("mine", "start"), ("mine", "die"), ("theirs", "start"),
                                       ("theirs", "die"), ("mine", "destroy")]):
        watcher.handle({"Action": action, "timeNano": n,
                        "Actor": {"ID": cid, "Attributes": {spec.LABEL_UUID: cid,
                                                            "exitCode": "137"}}})
    assert asked == [("mine", 137, False), ("theirs", 137, False)]
    assert [e.transition for e in emitted] == [
        Transition.STARTED, Transition.STOPPED, Transition.STARTED, Transition.CRASHED]
    assert removed == ["mine"]
