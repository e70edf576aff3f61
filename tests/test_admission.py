"""The bound on requests waiting for inference: by count and by the bytes of their bodies."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import pytest

from clouddetect.admission import Admission
from clouddetect.errors import Overloaded


def test_requests_past_the_count_are_refused() -> None:
    admission = Admission(max_requests=2, max_bytes=1000, max_wait_s=20.0)
    with admission.slot(10), admission.slot(10):
        assert admission.waiting == 2
        with pytest.raises(Overloaded, match="2 requests \\(20 bytes\\) already wait"), admission.slot(10):
            pass
    assert admission.waiting == 0


def test_bodies_past_the_byte_bound_are_refused_even_below_the_count() -> None:
    admission = Admission(max_requests=10, max_bytes=1000, max_wait_s=20.0)
    with admission.slot(600):
        with pytest.raises(Overloaded), admission.slot(401):
            pass
        with admission.slot(400):
            assert admission.waiting == 2


def test_a_body_of_exactly_the_bound_is_admitted() -> None:
    with Admission(max_requests=1, max_bytes=1000, max_wait_s=20.0).slot(1000):
        pass


def test_a_slot_is_given_back_when_its_request_fails() -> None:
    admission = Admission(max_requests=1, max_bytes=100, max_wait_s=20.0)
    with pytest.raises(ValueError), admission.slot(100):
        raise ValueError("decoding failed")
    with admission.slot(100):
        assert admission.waiting == 1


def test_concurrent_requests_never_exceed_the_bounds() -> None:
    admission = Admission(max_requests=5, max_bytes=50, max_wait_s=20.0)
    admitted, refused = [], []
    start = threading.Barrier(40)
    release = threading.Event()

    def request() -> None:
        start.wait()
        try:
            with admission.slot(7):
                admitted.append(admission.waiting)
                release.wait(timeout=10)
        except Overloaded:
            refused.append(True)

    with ExitStack() as stack:
        threads = [threading.Thread(target=request) for _ in range(40)]
        for thread in threads:
            thread.start()
        stack.callback(lambda: [t.join() for t in threads])
        stack.callback(release.set)
        while len(admitted) + len(refused) < len(threads):  # the admitted wait for release, the others are done
            threading.Event().wait(0.01)
    assert len(admitted) == 5 and len(refused) == 35  # 5 x 7 bytes fit in 50, a 6th would exceed the count
    assert max(admitted) <= 5 and admission.waiting == 0


# ---- time: what a request may wait, and refusing what could not be done within it


def test_a_client_may_shorten_its_wait_never_lengthen_it() -> None:
    admission = Admission(max_requests=10, max_bytes=1000, max_wait_s=20.0)
    assert admission.wait_allowed_s("5") == 5.0
    assert admission.wait_allowed_s("60") == 20.0
    for unusable in (None, "", "soon", "0", "-3", "nan"):
        assert admission.wait_allowed_s(unusable) == 20.0, unusable


def test_work_waiting_longer_than_the_wait_allowed_is_refused_at_once() -> None:
    admission = Admission(max_requests=10, max_bytes=1000, max_wait_s=20.0, service_s=lambda: 0.5)
    with admission.slot(10), admission.slot(10), admission.slot(10):
        assert admission.expected_wait_s() == 2.0  # three waiting, then this one
        assert admission.refusal_by_time(3.0) is None
        refusal = admission.refusal_by_time(1.5)
        assert isinstance(refusal, Overloaded) and "3 requests wait already" in refusal.message


def test_nothing_is_refused_by_time_before_a_service_time_is_known() -> None:
    admission = Admission(max_requests=10, max_bytes=1000, max_wait_s=20.0)
    with admission.slot(10):
        assert admission.refusal_by_time(0.001) is None
