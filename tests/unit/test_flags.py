"""The command line is generated from the config types: every field has its flag, the flags
build the config, and the help shows each field's documentation."""

from __future__ import annotations

import dataclasses

import pytest

from semlink.cli import build_parser
from semlink.cli.processes import SECRET_FIELDS
from semlink.device.settings import DeviceSettings
from semlink.flags import dataclass_from, field_docs, settings_from
from semlink.link.main import LinkSettings
from semlink.server.settings import ServerSettings


def _parse(argv: list[str]):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize(
    ("command", "settings"),
    [("server", ServerSettings), ("device", DeviceSettings), ("link", LinkSettings)],
)
def test_every_settings_field_is_a_flag(command, settings, capsys):
    with pytest.raises(SystemExit):
        _parse([command, "--help"])
    text = capsys.readouterr().out
    for name in settings.model_fields:
        flag = "--" + name.replace("_", "-")
        if name in SECRET_FIELDS:
            assert flag + " " not in text, f"{flag}: secrets stay out of argv"
        else:
            assert flag in text, f"{command} has no {flag}"


def test_settings_flags_override_only_what_is_given(monkeypatch):
    monkeypatch.setenv("SEMLINK_DEVICE_BUDGET", "0.5")
    args = _parse(["device", "--rate", "0.125", "--insecure", "--channel", "rayleigh"])
    s = settings_from(args, DeviceSettings)
    assert (s.rate, s.insecure, s.channel) == (0.125, True, "rayleigh")
    assert s.budget == 0.5  # from the environment: an absent flag does not override it
    with pytest.raises(SystemExit):
        _parse(["device", "--channel", "bluetooth"])  # Literal fields are choices


def test_dataclass_flags_build_the_config_and_its_nested_parts():
    from semlink.models.train_early_exit import TrainEarlyExitConfig

    args = _parse(
        [
            "train",
            "early-exit",
            "--regime",
            "joint",
            "--model.depth",
            "3",
            "--model.device-blocks",
            "2",
        ]
        + ["--no-model.recursive", "--model.cnn-channels", "4", "8", "--from-backbone", "b.pt"]
    )
    cfg = dataclass_from(args, TrainEarlyExitConfig)
    assert cfg.regime == "joint" and cfg.from_backbone == "b.pt"
    assert cfg.model.depth == 3 and cfg.model.recursive is False
    assert cfg.model.cnn_channels == (4, 8)
    defaults = dataclass_from(_parse(["train", "early-exit"]), TrainEarlyExitConfig)
    assert defaults == TrainEarlyExitConfig()


@pytest.mark.parametrize(
    ("argv", "module", "cls"),
    [
        (["train", "selector"], "semlink.models.train_selector", "TrainSelectorConfig"),
        (["train", "split"], "semlink.models.train_split", "SplitConfig"),
        (["train", "finetune"], "semlink.models.alast", "FinetuneConfig"),
        (["train", "jscc"], "semlink.models.train_jscc", "TrainJSCCConfig"),
        (["demo"], "semlink.demo", "DemoConfig"),
        (["bench", "compare"], "semlink.bench.compare", "CompareBenchConfig"),
        (["bench", "reliability"], "semlink.bench.reliability", "ReliabilityBenchConfig"),
    ],
)
def test_defaults_round_trip(argv, module, cls):
    """No flag given: the config the command builds is the dataclass's own default (the JSCC
    command's default selector is the shipped one, by design)."""
    import importlib

    klass = getattr(importlib.import_module(module), cls)
    built = dataclass_from(_parse(argv), klass)
    for f in dataclasses.fields(klass):
        if f.name != "selector_checkpoint":
            assert getattr(built, f.name) == getattr(klass(), f.name), f.name


def test_field_docs_read_docstrings_and_comments():
    @dataclasses.dataclass
    class Example:
        a: int = 1
        """The docstring of a."""
        b: float = 2.0  # the comment of b
        c: str = ""

    docs = field_docs(Example)
    assert docs == {"a": "The docstring of a.", "b": "the comment of b"}
