"""``semlink bench exit-policy`` judges the shipped policy, or one trained elsewhere, on the test
traces against rules tuned on validation."""

from semlink.bench.exit_policy import ExitPolicyBenchConfig, bench, format_table
from semlink.models.offload_env import CostModel
from semlink.models.train_policy import train_policy
from tests.conftest import ZOO, tiny_policy_config

MODEL_DIR = ZOO / "digits-ee" / "1"


def test_a_policy_trained_elsewhere_is_benched_with_its_own_costs(tmp_path):
    costs = CostModel([9.0, 2.0, 2.0, 2.0], [1.0] * 4, [4776] * 4, device_profile="camera")
    costs.save(tmp_path / "costs.json")
    train_policy(
        tiny_policy_config(
            tmp_path / "policy", costs=str(tmp_path / "costs.json"), total_timesteps=256
        )
    )
    cfg = ExitPolicyBenchConfig(model_dir=str(MODEL_DIR), policy_dir=str(tmp_path / "policy"))
    cfg.episodes = 40
    result = bench(cfg)
    assert result["costs"]["device_ms"] == costs.device_ms
    assert result["costs"]["device_profile"] == "camera"
    rows = {(r["regime"], r["policy"]) for r in result["rows"]}
    for regime in ("good", "bad", "varying"):
        assert {(regime, p) for p in ("rl", "threshold", "growth", "oracle")} <= rows
    table = format_table(result)
    assert table.startswith("device profile: camera") and "9.00" in table
