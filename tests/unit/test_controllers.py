"""Each controller's choice on hand-built states (deadline tight or loose, link good or bad, device
idle or busy), and the stream simulator's queue and on-time scoring, on the shipped digits-split
fixture's tables."""

from __future__ import annotations

import time

import numpy as np
import pytest

from semlink.device.controller import (
    ChannelState,
    ExitState,
    FrameState,
    LyapunovController,
    PlannerController,
    load_table,
    make_controller,
)
from semlink.device.controller.lyapunov import Constraint
from semlink.device.settings import DeviceSettings
from semlink.models.option_table import Outcomes
from semlink.models.stream_sim import DROPPED, LATE, Cpu, DeviceCosts, Simulator, Stream
from semlink.runtime.costs import Link, Predictor, StageTimes
from semlink.runtime.pipelines import Option, make_pipeline
from semlink.runtime.pipelines.base import EXIT, OFFLOAD, UPLOAD
from semlink.runtime.repository import resolve, scan
from tests.conftest import ZOO

# a slow device: each block 20 ms, packing 5 ms, a JPEG 8 ms; the server quick
STAGES = {
    "stretch0": 20.0,
    "stretch1": 20.0,
    "select1": 5.0,
    "select2": 5.0,
    "encode1": 6.0,
    "encode2": 6.0,
    "jpeg": 8.0,
}
SERVER = {"tail_1": 1.0, "tail_2": 1.0, "jscc_1": 1.0, "jscc_2": 1.0, "full": 2.0}
GOOD = ChannelState(bandwidth_bps=20e6, rtt_ms=10.0, snr_db=20.0, queued_bytes=0.0)
BAD = ChannelState(bandwidth_bps=50e3, rtt_ms=200.0, snr_db=0.0, queued_bytes=20_000.0)


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline(resolve(scan(ZOO), "digits-split"))


def predictor(pipe, stages=STAGES):
    table = load_table(pipe)
    p = Predictor(
        pipe.stages, lambda o: float(table.bytes[table.index(o)]), StageTimes(dict(stages))
    )
    for key, ms in SERVER.items():
        p.server.observe(key, ms)
    return p


def frame(channel, deadline_ms, elapsed_ms=0.0, waiting=0, interval_ms=None):
    return FrameState({}, channel, deadline_ms, elapsed_ms, waiting, interval_ms)


def test_the_predictor_adds_the_device_the_wire_and_the_server(pipe):
    p = predictor(pipe)
    off = Option.parse("s1:a0.5")
    pred = p.predict(off, Link(1e6, 20.0, 1000.0), elapsed_ms=3.0)
    nbytes = load_table(pipe).bytes[load_table(pipe).index(off)]
    assert pred.device_ms == 25.0 and pred.server_ms == 1.0
    assert pred.wire_ms == pytest.approx(8000.0 * (1000.0 + nbytes + 250) / 1e6 + 20.0)
    assert pred.latency_ms == pytest.approx(3.0 + 25.0 + pred.wire_ms + 1.0)
    exit2 = p.predict(Option(EXIT, 2), Link(), 0.0, done=1)  # the first block has run already
    assert exit2.latency_ms == 20.0 and exit2.bytes_up == 0


def test_planner_offloads_on_a_good_link_and_stays_home_on_a_bad_one(pipe):
    ctl = PlannerController(load_table(pipe), predictor(pipe))
    good = ctl.decide(frame(GOOD, 200.0))
    assert good.offloads  # the device's exits are less accurate than its server's tail
    bad = ctl.decide(frame(BAD, 200.0))
    assert bad.action == EXIT  # 20 kB queued at 50 kbit/s: seconds; an exit answers in time


def test_planner_answers_at_the_first_exit_when_the_deadline_is_tight(pipe):
    ctl = PlannerController(load_table(pipe), predictor(pipe))
    far = ChannelState(bandwidth_bps=20e6, rtt_ms=40.0, snr_db=20.0, queued_bytes=0.0)
    assert ctl.decide(frame(far, 30.0)) == Option(EXIT, 1)  # only one block fits, no round trip
    assert ctl.decide(frame(far, 100.0)).offloads  # with time for the round trip: the server
    busy = ctl.decide(frame(far, 100.0, elapsed_ms=75.0))  # ... unless the frame waited 75 ms
    assert busy == Option(EXIT, 1)
    assert ctl.decide(frame(far, 10.0)) == Option(EXIT, 1)  # none fits: the quickest


def test_planner_changes_course_at_an_exit_by_its_confidence(pipe):
    ctl = PlannerController(load_table(pipe), predictor(pipe))
    f = frame(GOOD, 200.0)
    plan = ctl.decide(f)
    unsure = ctl.at_exit(ExitState(0, 2, 1, 0.55, None, 20.0, 200.0), f, plan)
    assert unsure != Option(EXIT, 1)  # an unsure first exit is often wrong: go on, or the server
    sure = ctl.at_exit(ExitState(0, 2, 1, 0.93, None, 20.0, 200.0), f, plan)
    expected_sure = ctl.state()["expected_accuracy"]
    assert expected_sure > 0.95  # that confident, the first exit is rarely wrong ...
    b = frame(BAD, 200.0)
    assert ctl.at_exit(ExitState(0, 2, 1, 0.93, None, 20.0, 200.0), b, ctl.decide(b)).action == EXIT
    assert sure.split >= 1  # ... and a bad link leaves the device's own answer


def test_lyapunov_trades_accuracy_for_the_link_it_has(pipe):
    """One configuration: on a fast link with frames far apart it sends tokens; at the same
    rate and a frame every 10 ms over a slow link, the link's queue grows and it sends less."""
    table = load_table(pipe)

    def run(channel, interval_ms):
        ctl = LyapunovController(
            table,
            [Constraint("link", 0.8, 1.0), Constraint("device", 0.9, 1.0)],
            V=10.0,
            predictor=predictor(pipe),
        )
        f = frame(channel, 1000.0, interval_ms=interval_ms)
        sent = []
        for _ in range(200):
            option = ctl.decide(f)
            nbytes = float(table.bytes[table.index(option)])
            sent.append(nbytes)
            from semlink.runtime.frames import Outcome

            ctl.observe(
                Outcome(
                    option,
                    bytes_up=int(nbytes),
                    device_ms=40.0,
                    extra={"interval_ms": interval_ms, "bandwidth_bps": channel.bandwidth_bps},
                )
            )
        return np.mean(sent[-100:]), ctl

    fast_bytes, _ = run(GOOD, 200.0)
    slow = ChannelState(bandwidth_bps=50e3, rtt_ms=10.0, snr_db=20.0, queued_bytes=0.0)
    slow_bytes, ctl = run(slow, 100.0)  # the link carries 625 B a frame: 500 B at 80 %
    assert fast_bytes > 600 and slow_bytes < 560
    assert ctl.state()["avg_link"] < 0.9  # the average utilisation held near its budget (0.8)


def test_every_controller_the_pipeline_names_is_built_from_the_settings(pipe):
    p = predictor(pipe)
    for name in pipe.controllers:
        if name == "rl" and not (pipe.model.path / "policy.onnx").is_file():
            continue
        ctl = make_controller(DeviceSettings(model_name="digits-split", controller=name), pipe, p)
        option = pipe.check_option(ctl.decide(frame(GOOD, 500.0)))
        assert option in pipe.options()
    with pytest.raises(ValueError, match="does not fit model 'digits-vit'"):
        make_controller(
            DeviceSettings(controller="planner"), make_pipeline(resolve(scan(ZOO), "digits-vit")), p
        )


def _sim(pipe, fps, deadline_ms, stages=STAGES, link="10mbit", seconds=4.0, max_waiting=32):
    from semlink.bench.policy import schedule_of

    out = Outcomes.load(pipe.model.path / "outcomes_test.npz")
    costs = DeviceCosts(dict(stages), 1.0, dict(SERVER))
    return Simulator(
        out,
        pipe.stages,
        costs,
        schedule_of(link, seconds, 0),
        Stream(fps, deadline_ms, seconds, max_waiting=max_waiting),
    )


def test_a_stream_faster_than_the_device_fills_its_queue_and_is_answered_late_or_dropped(pipe):
    """Exit 2 takes 41 ms of device a frame; at 100 frames/s the queue fills: frames past its
    bound are dropped at once, frames that cannot start in time answered late; none is lost."""
    from semlink.device.controller import FixedController

    sim = _sim(pipe, fps=100.0, deadline_ms=150.0, max_waiting=3)
    run = sim.run("exit2", FixedController(pipe, Option(EXIT, 2)))
    options = np.array(run.option)
    assert (options == DROPPED).sum() > 0 and (options == LATE).sum() > 0
    assert len(options) == 400 and all(o in (DROPPED, LATE, "exit2") for o in options)
    assert not run.on_time[options != "exit2"].any()  # late and dropped count as wrong
    assert run.summary(150.0)["on_time"] < 0.5


def test_on_time_means_right_and_within_the_deadline(pipe):
    from semlink.device.controller import FixedController

    slow = _sim(pipe, fps=5.0, deadline_ms=30.0)  # exit 2 takes 41 ms: right but late
    run = slow.run("exit2", FixedController(pipe, Option(EXIT, 2)))
    assert run.correct.mean() > 0.8 and run.on_time.sum() == 0
    easy = _sim(pipe, fps=5.0, deadline_ms=100.0)
    run = easy.run("exit2", FixedController(pipe, Option(EXIT, 2)))
    np.testing.assert_array_equal(run.on_time, run.correct)


def test_the_oracle_is_never_below_a_fixed_option_and_strategies_pair_frame_by_frame(pipe):
    from semlink.device.controller import FixedController

    sim = _sim(pipe, fps=10.0, deadline_ms=100.0, link="1mbit")
    oracle = sim.run("oracle", None)
    for option in (Option(EXIT, 1), Option.parse("s1:a0.25"), Option(UPLOAD, quality=75)):
        fixed = sim.run(option.name, FixedController(pipe, option))
        np.testing.assert_array_equal(fixed.frame, oracle.frame)
        assert oracle.on_time.mean() >= fixed.on_time.mean()
    assert {Option.parse(n).action for n in oracle.option} <= {EXIT, OFFLOAD, UPLOAD}


def test_the_quota_hands_out_cpu_in_slices_per_period():
    """CFS bandwidth control as the simulator models it: a fiftieth of a core with a 50 ms
    period gives 1 ms of CPU a period; work past it waits for the next period."""

    cpu = Cpu(0.02, 50.0)
    assert cpu.run(0.0, 0.4) == pytest.approx(0.4)  # inside the slice: full speed
    assert cpu.run(0.4, 1.1) == pytest.approx(50.5)  # 0.6 ms left, then the next period
    assert cpu.run(60.0, 3.0) == pytest.approx(200.5)  # 0.5 left of this period, 1, 1, then 0.5
    assert Cpu(None, 10.0).run(5.0, 3.0) == 8.0
    # periods whose multiples floating point cannot hit (the sensor class's 52.63 ms): work
    # that ends on a boundary moves on to the next period (once, the loop stalled there)
    period = 1.026 / 0.0195
    cpu, t = Cpu(0.0195, period), 0.0
    for _ in range(2000):
        t = cpu.run(t, 0.513)  # half a slice, again and again: two per period
    assert t == pytest.approx(999 * period + 1.026)  # the last period: its slice, whole
    costs = DeviceCosts({"stretch0": 2.0}, 0.5, {}).under(0.1, 10.0)
    assert costs.sustained() == {"stretch0": pytest.approx(20.0)} and costs.share == 0.1


def test_the_devices_background_takes_its_part_of_the_quota_first():
    """A device polling its link and probing servers spends CPU with no frame at all: a tenth of
    a core with 20 ms a second of background leaves 0.8 ms of each 10 ms period to a frame, and
    never less than half the slice, however busy the background."""
    cpu = Cpu(0.1, 10.0, reserved=20.0)
    assert cpu.run(0.0, 1.6) == pytest.approx(10.8)  # 0.8 ms, then 0.8 more in the next period
    assert Cpu(0.1, 10.0, reserved=500.0).run(0.0, 1.0) == pytest.approx(10.5)
    assert Cpu(None, 10.0, reserved=500.0).run(0.0, 1.0) == 1.0  # no quota: another core
    costs = DeviceCosts({"stretch0": 2.0}, 0.5, {}, idle_ms_per_s=20.0).under(0.1, 10.0)
    assert costs.sustained() == {"stretch0": pytest.approx(25.0)}


def test_a_refused_frame_costs_the_device_its_front(pipe):
    """Late and dropped frames were received and read before they were refused: with a front
    that costs something, an overloaded device answers fewer frames than with a free one."""
    from semlink.device.controller import FixedController

    def answered(front_ms: float) -> int:
        sim = _sim(pipe, fps=100.0, deadline_ms=150.0, max_waiting=3)
        sim.costs = DeviceCosts(dict(sim.costs.stages), front_ms, dict(SERVER))
        return int(sim.run("exit2", FixedController(pipe, Option(EXIT, 2))).answered.sum())

    assert answered(5.0) < answered(0.0)


def test_a_controllers_own_cpu_is_charged_to_the_device_when_asked(pipe):
    """The device pays for its controller's decisions: a controller that spends 2 ms of CPU
    deciding, on a tenth of a core, answers later when the replay charges it (the regime map's
    replay), and exactly as a free one when it does not (training's, deterministic)."""
    from semlink.device.controller import FixedController

    class Slow(FixedController):
        def decide(self, frame):
            c0 = time.thread_time()
            while time.thread_time() - c0 < 0.002:  # CPU, not sleep: thread time counts it
                pass
            return super().decide(frame)

    def p50(charge: bool) -> tuple[float, float]:
        sim = _sim(pipe, fps=2.0, deadline_ms=500.0)
        sim.costs = sim.costs.under(0.1, 10.0)
        sim.charge_decisions = charge
        run = sim.run("exit1", Slow(pipe, Option(EXIT, 1)))
        assert run.answered.all()
        return float(np.median(run.latency_ms)), float(np.median(run.device_ms))

    (free_ms, free_cpu), (paid_ms, paid_cpu) = p50(False), p50(True)
    assert paid_cpu >= free_cpu + 2.0  # the decision's CPU, on the frame's bill
    assert paid_ms >= free_ms + 15.0  # 2 ms of CPU at a tenth of a core: about 20 ms of wall


def test_a_measured_cell_names_a_trace_by_its_path():
    """Cells run in real processes are named PROFILE/LINK/FPS/DEADLINE, and a trace's link is a
    path with slashes of its own (once, the map's run stopped at its first trace cell)."""
    from semlink.bench.regimes import parse_cell

    assert parse_cell("pi-zero-2/trace:/x/traces/ATT.up/15/100") == (
        "pi-zero-2",
        "trace:/x/traces/ATT.up",
        "15",
        "100",
    )
    assert parse_cell("sensor/1mbit/5/33") == ("sensor", "1mbit", "5", "33")
