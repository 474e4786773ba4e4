"""Late-bound chunk scheduling (worldsim/serve/pacing.py) and the client-side control-to-photon helpers."""

from __future__ import annotations

import pytest

from worldsim.client.photon import expected_control_to_photon
from worldsim.serve.pacing import MARGIN_FRAMES, Job, Playout, latency_floor_s, plan


def test_playout_deadline_follows_the_client_buffer():
    p = Playout(fps=16, lookahead_s=0.0, now=100.0)
    assert p.deadline() == pytest.approx(100.0 - MARGIN_FRAMES / 16)  # nothing buffered: due at once
    p.finished(frames=12, duration_s=0.2, now=100.2)  # 12 frames = 0.75 s of playout from their arrival
    assert p.end == pytest.approx(100.95)
    p.finished(frames=12, duration_s=0.2, now=100.9)  # arrived before the buffer ran out: playout continues
    assert p.end == pytest.approx(101.7)
    p.finished(frames=12, duration_s=0.2, now=102.0)  # arrived late: the client stalled, playout restarts
    assert p.end == pytest.approx(102.75)
    assert p.estimate_s(fallback=1.0) == pytest.approx(0.2)
    smooth = Playout(fps=16, lookahead_s=0.5, now=0.0)
    smooth.finished(12, 0.2, 0.2)
    assert smooth.deadline() == pytest.approx(0.95 - 0.5 - MARGIN_FRAMES / 16)  # lookahead: earlier, by as much
    assert Playout(fps=0, lookahead_s=0, now=0).deadline() is None


def test_plan_starts_paced_chunks_as_late_as_their_deadlines_allow():
    a = Job(1, duration_s=0.2, deadline=10.0)
    assert plan([a], now=9.5) == (None, pytest.approx(0.3))  # 0.3 s of slack: wait, newer controls may come
    assert plan([a], now=9.8)[0] is a
    # two sessions due close together: the earlier one must start early enough for both to make it
    b = Job(2, duration_s=0.2, deadline=10.1)
    job, wait = plan([a, b], now=9.5)
    assert job is None and wait == pytest.approx(9.7 - 9.5)
    assert plan([a, b], now=9.7)[0] is a


def test_plan_fills_slack_with_late_and_unpaced_work_only_when_it_fits():
    paced = Job(1, duration_s=0.2, deadline=10.0)
    unpaced = Job(2, duration_s=0.2, deadline=None, last_run=5.0)
    late = Job(3, duration_s=0.2, deadline=9.0)  # already missed: no longer protected
    older = Job(4, duration_s=0.2, deadline=None, last_run=1.0)
    assert plan([paced, unpaced, late, older], now=9.0)[0] is late  # late paced work first
    assert plan([paced, unpaced, older], now=9.0)[0] is older  # then unpaced, least recently run first
    assert plan([paced, unpaced], now=9.65) == (None, pytest.approx(0.15))  # would push the paced chunk late
    assert plan([unpaced], now=9.65)[0] is unpaced
    assert plan([], now=0.0) == (None, float("inf"))


def test_expected_control_to_photon_and_floor():
    # chunks started every 0.75 s, each first shown 0.25 s after its start: an input waits 0.375 s on average
    chunks = [(0.75 * k, 0.75 * k + 0.25) for k in range(10)]
    assert expected_control_to_photon(chunks) == pytest.approx(0.375 + 0.25)
    assert latency_floor_s(12, 16.0, 0.25) == pytest.approx(0.625)
    assert expected_control_to_photon(chunks[:1]) is None
