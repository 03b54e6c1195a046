"""The offloading environment (docs/methods.md#rl-offloading): gymnasium's checker, reward arithmetic on hand-made
traces, the oracle, the rule baselines, and the policy's training and export."""

from __future__ import annotations

import numpy as np
import pytest

from semlink.link.traces import ConstantSchedule
from semlink.models.exit_traces import ExitTraces
from semlink.models.offload_env import (
    REGIMES,
    ChannelRegime,
    CostModel,
    Episode,
    OffloadEnv,
    RewardWeights,
    delivery_ms,
)
from semlink.runtime.offload_policy import CONTINUE, EXIT, OFFLOAD, PolicySpec, rule_action

COSTS = CostModel(device_ms=[10.0, 5.0], server_ms=[2.0, 1.0], offload_bytes=[3000, 1500])
WEIGHTS = RewardWeights(lam_t=1.0, lam_e=1.0, lam_b=0.01, deadline_ms=100.0)


def traces() -> ExitTraces:
    # 3 exits, the device holds exits 0 and 1; sample 0 is right everywhere, sample 1 only at
    # the final exit (the server's answer).
    return ExitTraces(
        conf=np.array([[0.9, 0.95, 0.99], [0.4, 0.45, 0.9]], np.float32),
        margin=np.zeros((2, 3), np.float32),
        pred=np.array([[3, 3, 3], [0, 0, 7]]),
        labels=np.array([3, 7]),
        exit_blocks=np.array([1, 2, 3]),
        segment_flops=np.array([100, 50, 50]),
        device_exits=np.array([0, 1]),
        activation_bytes=np.array([3000, 1500, 1500]),
    )


def env(rate_bps: float = 12e6) -> OffloadEnv:
    """A constant 12 Mbit/s link: exactly one 1500-byte packet per millisecond."""
    regime = ChannelRegime("test", "constant", rate_bps, rate_bps, (20.0, 20.0), (10.0, 10.0))
    return OffloadEnv(traces(), COSTS, WEIGHTS, channels=[(regime, ConstantSchedule(rate_bps))])


def episode(sample: int, queue_ms: float = 3.0) -> Episode:
    return Episode(
        sample=sample, schedule=0, t_ms=5000.0, rtt_ms=20.0, snr_db=10.0, queue_ms=queue_ms
    )


def play(e: OffloadEnv, ep: Episode, actions: list[int]):
    obs, _ = e.reset(options={"episode": ep})
    for a in actions:
        obs, reward, done, truncated, info = e.step(a)
    assert done and not truncated
    return reward, info["outcome"]


def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    check_env(env(), skip_render_check=True)


def test_registered_and_made_by_id():
    import gymnasium as gym

    from semlink.models.offload_env import ENV_ID, register

    register()
    e = gym.make(ENV_ID, traces=traces(), costs=COSTS)
    obs, _ = e.reset(seed=3)
    assert obs.shape == (8,)


def test_seeded_resets_repeat():
    a, b = env(), env()
    np.testing.assert_array_equal(a.reset(seed=7)[0], b.reset(seed=7)[0])


def test_delivery_time_on_a_constant_link():
    link = ConstantSchedule(12e6)  # one packet per ms
    assert delivery_ms(link, 1000.0, 1500) == 1.0
    assert delivery_ms(link, 1000.0, 3001) == 3.0  # three packets
    assert delivery_ms(link, 1000.0, 0) == 0.0


def test_reward_of_a_local_exit():
    reward, out = play(env(), episode(0), [EXIT])
    assert out.correct and not out.offloaded and out.bytes == 0
    assert out.latency_ms == 10.0
    energy = COSTS.device_power_w * 0.010
    assert out.energy_j == pytest.approx(energy)
    assert reward == pytest.approx(1.0 - 0.010 - energy)


def test_reward_of_an_offload_after_continuing():
    reward, out = play(env(), episode(1), [CONTINUE, OFFLOAD])
    # device 10 + 5 ms, one packet (1 ms), RTT 20, queue 3, server 1
    assert out.latency_ms == pytest.approx(15 + 1 + 20 + 3 + 1)
    energy = COSTS.device_power_w * 0.015 + COSTS.radio_power_w * 0.001
    assert out.energy_j == pytest.approx(energy)
    assert out.correct and out.bytes == 1500  # the server's final exit knows sample 1
    assert reward == pytest.approx(1.0 - 0.040 - energy - 0.01 * 1.5)


def test_a_late_answer_counts_as_wrong():
    _, out = play(env(), episode(1, queue_ms=500.0), [OFFLOAD])
    assert out.latency_ms > WEIGHTS.deadline_ms and not out.correct


def test_continue_at_the_last_device_exit_offloads():
    _, out = play(env(), episode(1), [CONTINUE, CONTINUE])
    assert out.offloaded and out.exit_at == 1


def test_no_bandwidth_makes_offloading_lose():
    e = env(rate_bps=1e4)  # 3000 bytes take 2.4 s: past any deadline
    r_exit, _ = play(e, episode(1), [CONTINUE, EXIT])
    r_off, out = play(e, episode(1), [OFFLOAD])
    assert not out.correct and r_off < r_exit


def test_oracle_is_at_least_every_action_sequence():
    e = env()
    for sample in (0, 1):
        best = e.oracle(episode(sample)).reward
        for actions in ([EXIT], [OFFLOAD], [CONTINUE, EXIT], [CONTINUE, OFFLOAD]):
            assert best >= play(e, episode(sample), actions)[0] - 1e-12


def test_observation_carries_confidence_growth_and_channel():
    e = env()
    obs, _ = e.reset(options={"episode": episode(1)})
    obs, *_ = e.step(CONTINUE)
    assert obs[0] == 1.0 and obs[1] == pytest.approx(0.45) and obs[2] == pytest.approx(0.05)
    assert obs[3] == pytest.approx(np.log10(12e6) / 8, rel=1e-3)
    assert obs[5] == pytest.approx(0.2)  # RTT / 100 ms


@pytest.mark.parametrize(
    ("spec", "conf", "growth", "last", "action"),
    [
        (PolicySpec("threshold", {"tau": 0.8}), 0.9, 0.0, False, EXIT),
        (PolicySpec("threshold", {"tau": 0.8}), 0.5, 0.0, False, CONTINUE),
        (PolicySpec("threshold", {"tau": 0.8}), 0.5, 0.0, True, OFFLOAD),
        (PolicySpec("growth", {"tau_exit": 0.8, "tau_grow": 0.05}), 0.5, 0.01, False, OFFLOAD),
        (PolicySpec("growth", {"tau_exit": 0.8, "tau_grow": 0.05}), 0.5, 0.2, False, CONTINUE),
        (PolicySpec("never-offload"), 0.1, 0.0, True, EXIT),
        (PolicySpec("always-offload"), 0.99, 0.0, False, OFFLOAD),
    ],
)
def test_rule_policies(spec, conf, growth, last, action):
    obs = np.array([1.0 if growth else 0.5, conf, growth, 0.9, 0.3, 0.2, 0.05, 0.9], np.float32)
    assert rule_action(spec, obs, last) == action


def test_regimes_differ_in_bandwidth():
    good, bad = (REGIMES[r].schedules([0])[0].average_bps() for r in ("good", "bad"))
    assert good > 10 * bad


# --- the policy: training smoke run, export parity, device decisions -------------------------


def test_training_entry_point_runs_and_exports_a_matching_policy(tmp_path):
    import json

    import onnxruntime as ort
    from stable_baselines3 import PPO

    from semlink.models.train_policy import train_policy
    from tests.conftest import tiny_policy_config

    metrics = train_policy(tiny_policy_config(tmp_path))
    assert metrics["algorithm"] == "PPO" and len(metrics["history"]) == 2
    assert json.loads((tmp_path / "policy.json").read_text())["actions"] == [
        "exit",
        "continue",
        "offload",
    ]
    model = PPO.load(tmp_path / "ppo_best.zip", device="cpu")
    obs = np.random.default_rng(0).random((16, 8)).astype(np.float32)
    logits = ort.InferenceSession(str(tmp_path / "policy.onnx")).run(None, {"obs": obs})[0]
    greedy = model.predict(obs, deterministic=True)[0]
    np.testing.assert_array_equal(logits.argmax(1), greedy)


def test_several_seeds_share_one_cost_model_and_the_best_on_validation_ships(tmp_path):
    """--costs reuses a measured cost model (nothing measured again); --seeds trains one policy
    per seed on it and ships the one with the best validation reward."""
    import json

    from semlink.models.offload_env import CostModel
    from semlink.models.train_policy import train_policy
    from tests.conftest import tiny_policy_config

    costs = CostModel(
        [5.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0], [4776] * 4, device_profile="camera"
    )
    costs.save(tmp_path / "given.json")
    cfg = tiny_policy_config(
        tmp_path / "out", costs=str(tmp_path / "given.json"), seeds=2, total_timesteps=256
    )
    metrics = train_policy(cfg)
    assert set(metrics["seeds"]) == {"0", "1"}
    assert metrics["val_reward"] == max(metrics["seeds"].values())
    assert metrics["seeds"][str(metrics["seed"])] == metrics["val_reward"]
    assert CostModel.load(tmp_path / "out" / "costs.json") == costs
    shipped = json.loads((tmp_path / "out" / "policy.json").read_text())
    assert shipped["seeds"] == metrics["seeds"] and "validation" in shipped["chosen_on"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "costs.json",
        "policy.json",
        "policy.onnx",
        "ppo_best.zip",
    ]


def shipped_controller():
    from semlink.device.controller import RLController
    from semlink.runtime.pipelines.base import OFFLOAD, Option
    from tests.conftest import ZOO

    return RLController(ZOO / "digits-ee" / "1" / "policy.onnx", Option(OFFLOAD, 4))


def test_shipped_policy_exits_when_very_confident():
    from semlink.device.controller import ChannelState, ExitState, FrameState
    from semlink.runtime.pipelines.base import EXIT, Option

    rl = shipped_controller()
    good = ChannelState(bandwidth_bps=50e6, rtt_ms=10.0, snr_db=25.0)
    frame = FrameState({}, good, 150.0)
    plan = rl.decide(frame)
    assert rl.at_exit(ExitState(0, 4, 1, 0.999, None, 10.0, 150.0), frame, plan) == Option(EXIT, 1)


def test_shipped_policy_never_offloads_without_bandwidth():
    from semlink.device.controller import ChannelState, ExitState, FrameState
    from semlink.runtime.pipelines.base import EXIT, OFFLOAD

    rl = shipped_controller()
    dead = ChannelState(bandwidth_bps=0.0, rtt_ms=500.0, snr_db=-10.0)
    frame = FrameState({}, dead, 150.0)
    plan = rl.decide(frame)
    prev = None
    for k, conf in enumerate((0.3, 0.35, 0.4, 0.42)):
        taken = rl.at_exit(ExitState(k, 4, k + 1, conf, prev, 10.0 * (k + 1), 150.0), frame, plan)
        assert not (taken.action == OFFLOAD and taken.split == k + 1), (
            f"offloaded at exit {k} over a dead link"
        )
        if taken.action == EXIT:
            break
        prev = conf


def test_costs_are_measured_under_the_device_profile_not_multiplied():
    from semlink.models.offload_env import CostModel
    from tests.conftest import ZOO

    costs = CostModel.measure(ZOO / "digits-ee" / "1", "camera", repeats=20)
    assert costs.device_profile == "camera" and costs.device_cpu_share == 0.1
    assert costs.device_slowdown == 1.0  # no multiplier: the quota made the device slow
    assert len(costs.device_ms) == len(costs.server_ms) == 4
    assert all(ms > 0 for ms in costs.device_ms + costs.server_ms)
    # a cost model written before profiles (a multiplier of 50) still loads
    old = CostModel.load(ZOO / "digits-ee" / "1" / "costs.json")
    assert old.device_slowdown == 50.0 and old.device_profile == "none"


def test_a_given_cost_model_must_exist_and_fit_the_pipeline(tmp_path):
    from semlink.models.offload_env import CostModel
    from semlink.models.train_policy import train_policy
    from tests.conftest import tiny_policy_config

    with pytest.raises(FileNotFoundError, match="without --costs measures"):
        train_policy(tiny_policy_config(tmp_path, costs=str(tmp_path / "none.json")))
    CostModel([1.0, 1.0], [1.0, 1.0], [10, 10]).save(tmp_path / "two.json")
    with pytest.raises(ValueError, match="2 device exits"):
        train_policy(tiny_policy_config(tmp_path, costs=str(tmp_path / "two.json")))
