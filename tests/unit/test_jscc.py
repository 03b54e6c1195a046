"""Nested JSCC: symbol maths, export parity, calibration files, training smoke run, baselines."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from semlink.cli import main
from semlink.models import baselines, semcom
from semlink.models.eval_jscc import calibrate, load_calibration
from semlink.models.jscc import JSCCConfig, snr_feature
from semlink.runtime.symbols import channel_uses, normalise, symbol_mask, symbols_kept


@pytest.mark.parametrize(
    "rate,m",
    [(1 / 32, 3), (1 / 16, 6), (1 / 8, 12), (1 / 4, 24), (1 / 2, 48), (1.0, 96), (0.3, 29)],
)
def test_symbols_kept(rate, m):
    assert symbols_kept(96, rate) == m


@pytest.mark.parametrize("rate", [0.0, 1.2, float("nan")])
def test_bad_rate_names_the_range(rate):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        symbols_kept(96, rate)


def test_channel_uses_formula():
    assert channel_uses(9, 12, 48 * 48) == pytest.approx(9 * 12 / 2304)


def test_normalise_gives_unit_power_on_kept_symbols_numpy_and_torch():
    rng = np.random.default_rng(0)
    re, im = rng.normal(size=(2, 5, 16)) * 3, rng.normal(size=(2, 5, 16))
    mask = symbol_mask(np.array([4, 16]), 16, re)
    nr, ni = normalise(re, im, mask)
    power = (nr**2 + ni**2).sum(-1) / mask.sum(-1)
    np.testing.assert_allclose(power, 1.0, rtol=1e-6)
    assert (nr[0, :, 4:] == 0).all()
    tr, ti = normalise(
        torch.from_numpy(re),
        torch.from_numpy(im),
        symbol_mask(torch.tensor([4, 16]), 16, torch.from_numpy(re)),
    )
    np.testing.assert_allclose(tr.numpy(), nr, atol=1e-6)


def test_nested_code_prefix_is_the_same_at_every_rate(tiny_jscc):
    x = torch.randn(1, 4, 32)
    re, im = tiny_jscc.coder.encoder(x)
    # a lower rate sends a prefix of the same symbols (up to the per-token power scale)
    low = normalise(re, im, symbol_mask(torch.tensor([4]), 16, re))[0][..., :4]
    high = normalise(re, im, symbol_mask(torch.tensor([16]), 16, re))[0][..., :4]
    ratio = (low / high).detach()
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))


def test_jscc_export_matches_pytorch(tiny_repository, tiny_jscc):
    d = tiny_repository / "tiny-jscc" / "1"
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["kind"] == "token-selection+jscc" and manifest["jscc"]["symbols"] == 16
    head, tail = (
        ort.InferenceSession(str(d / "head.onnx")),
        ort.InferenceSession(str(d / "tail.onnx")),
    )
    assert manifest["jscc"]["snr_range"] == [-20.0, 20.0]
    assert "snr_db" in manifest["head"]["inputs"] and "snr_db" in manifest["tail"]["inputs"]
    images = np.random.default_rng(0).normal(size=(2, 1, 48, 48)).astype(np.float32)
    snr = np.array([-5.0, 35.0], np.float32)  # 35 dB codes as the range's top, 20 dB
    symbols, idx = head.run(
        None, {"image": images, "alpha": np.full(2, 0.25, np.float32), "snr_db": snr}
    )
    with torch.no_grad():
        out = tiny_jscc.vit.forward_device(torch.from_numpy(images), torch.full((2,), 0.25))
        kept, tidx = tiny_jscc.vit.select(out.tokens, out.key, 9)
        re, im = tiny_jscc.coder.encoder(kept, torch.tensor([-5.0, 20.0]))
        np.testing.assert_allclose(symbols, torch.cat([re, im], -1).numpy(), atol=1e-4)
        np.testing.assert_array_equal(idx, tidx.numpy())
        other = torch.cat(tiny_jscc.coder.encoder(kept, torch.tensor([10.0, 20.0])), -1).numpy()
        assert np.abs(other[0] - symbols[0]).max() > 1e-3  # the code depends on the SNR
        mask = symbol_mask(torch.full((2,), 5), 16, re)
        nre, nim = normalise(re, im, mask)
        received = tiny_jscc.coder.decoder(nre, nim, torch.tensor([-5.0, 20.0]))
        expected = tiny_jscc.vit.forward_tail(received).numpy()
    nr, ni = normalise(
        symbols[..., :16], symbols[..., 16:], symbol_mask(np.full(2, 5), 16, symbols[..., :16])
    )
    logits = tail.run(
        None,
        {
            "symbols": np.concatenate([nr, ni], -1).astype(np.float32),
            "token_mask": np.ones((2, 9), np.float32),
            "snr_db": snr,
        },
    )[0]
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_snr_feature_clamps_to_the_training_range():
    cfg = JSCCConfig(snr_range=(-20.0, 20.0))
    like = torch.zeros(5, 3)
    feature = snr_feature(torch.tensor([-40.0, -20.0, 0.0, 10.0, 30.0]), cfg, like).flatten()
    torch.testing.assert_close(feature, torch.tensor([-1.0, -1.0, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(snr_feature(None, cfg, like), torch.ones(5, 1, 1))  # noiseless


def test_a_coder_from_before_the_snr_conditioning_loads_unconditioned(tiny_model, tmp_path):
    from semlink.models import checkpoint, semcom

    old = JSCCConfig(embed_dim=32, symbols=16, hidden=32, snr_conditioned=False)
    model = semcom.SemComModel(tiny_model.cfg, old)
    doc = {k: v for k, v in dataclasses.asdict(old).items() if not k.startswith("snr")}
    checkpoint.save(
        tmp_path / "old.pt",
        config={"vit": dataclasses.asdict(tiny_model.cfg), "jscc": doc},
        state_dict=model.state_dict(),
        metrics={},
    )
    loaded, _ = semcom.load(tmp_path / "old.pt")
    assert not loaded.coder.cfg.snr_conditioned and loaded.coder.decoder.mlp.film is None


def test_the_jscc_pipeline_codes_and_decodes_for_the_requests_snr(tiny_repository, tiny_jscc):
    """The device's head codes for the SNR it is given, its local answer and the server's
    admitted work decode for it: both equal the torch coder at that SNR."""
    from semlink.protocol import params as P
    from semlink.runtime.pipelines import make_pipeline
    from semlink.runtime.pipelines.base import OFFLOAD, Option, WireOptions
    from semlink.runtime.repository import resolve, scan

    mv = resolve(scan(tiny_repository), "tiny-jscc")
    pipe = make_pipeline(mv)
    pipe.open(pipe.device_graphs())
    image = np.random.default_rng(5).normal(size=(1, 1, 48, 48)).astype(np.float32)
    option = Option(OFFLOAD, pipe.geometry.split, 0.25, 0.25)
    stretch, offload = pipe.run_device(image, option, WireOptions("fp32", -5.0, "none"), -5.0)
    local = pipe.answer_locally(stretch, offload)
    work = pipe.admit(
        {"symbols": ("FP32", offload.tensors["symbols"])},
        {P.SNR_DB: -5.0, P.CHANNEL: "none"},
    )
    served = pipe.run_batch(work.graph, work.samples)
    with torch.no_grad():
        out = tiny_jscc.vit.forward_device(torch.from_numpy(image), torch.full((1,), 0.25))
        kept, _ = tiny_jscc.vit.select(out.tokens, out.key, 9)
        re, im = tiny_jscc.coder.encoder(kept, torch.tensor([-5.0]))
        nre, nim = normalise(re, im, symbol_mask(torch.tensor([4]), 16, re))
        expected = tiny_jscc.vit.forward_tail(
            tiny_jscc.coder.decoder(nre, nim, torch.tensor([-5.0]))
        ).numpy()
    np.testing.assert_allclose(local, expected, atol=1e-4)
    np.testing.assert_allclose(served, expected, atol=1e-4)


def test_calibration_is_on_validation_and_versioned(tiny_jscc, tmp_path):
    from semlink.models.data import load_digits_canvas

    val = load_digits_canvas("val")
    val.images, val.labels = val.images[:20], val.labels[:20]
    with pytest.raises(ValueError, match="validation split"):
        calibrate(tiny_jscc, load_digits_canvas("test"), "abc")
    table = calibrate(tiny_jscc, val, "abc")
    assert len(table["grid"]) == 11 * 6 * 6 and table["split"] == "val"
    assert {"snr_db", "alpha", "rate", "channel_uses", "accuracy"} <= set(table["grid"][0])
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(table))
    assert load_calibration(path, "abc")["n"] == 20
    with pytest.raises(ValueError, match="made for model .abc."):
        load_calibration(path, "other")


def test_train_jscc_smoke(tiny_checkpoint, tmp_path, capfd):
    out = tmp_path / "j.pt"
    assert (
        main(
            [
                "train",
                "jscc",
                "--selector-checkpoint",
                str(tiny_checkpoint),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--max-steps",
                "2",
                "--limit-train",
                "32",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    model, ckpt = semcom.load(out)
    assert ckpt["resume"]["epoch"] == 1 and model.vit.cfg.embed_dim == 32
    assert len(ckpt["metrics"]["history"]) == 1
    # not a terminal, so no bar: a log line an epoch says how the run goes
    assert "jscc epoch 1/1: loss" in capfd.readouterr().err


def test_device_part_is_frozen_for_jscc_training(tiny_jscc):
    import copy

    model = copy.deepcopy(tiny_jscc)
    model.freeze_device()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "vit.patch_embed.proj.weight" in frozen and "vit.blocks.0.attn.qkv.weight" in frozen
    assert (
        "vit.blocks.2.attn.qkv.weight" not in frozen
        and "coder.encoder.real.net.0.weight" not in frozen
    )


def test_jpeg_baseline_fits_the_budget_or_fails():
    img = (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)
    assert baselines.jpeg_at_budget(img, 100) is None  # headers alone exceed 100 bits
    rec = baselines.jpeg_at_budget(img, 8 * 2000)
    assert rec is not None and rec.shape == (48, 48)
    assert baselines.raw_digital(img, 7) is None and baselines.raw_digital(img, 8 * 36).shape == (
        48,
        48,
    )
    out, ok = baselines.reconstruct("raw-analog", img[None], 0.01, 10.0)
    assert ok.all() and out.shape == (1, 48, 48)


def test_quantised_tokens_keep_each_tokens_range_and_the_level_count():
    from semlink.models.eval_jscc import quantise_tokens

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 5, 32)).astype(np.float32)
    q8, q1 = quantise_tokens(tokens, 8), quantise_tokens(tokens, 1)
    span = tokens.max(-1, keepdims=True) - tokens.min(-1, keepdims=True)
    assert np.abs(q8 - tokens).max() <= (span / 255).max() / 2 + 1e-6
    assert all(len(np.unique(row)) <= 2 for row in q1.reshape(-1, 32))


def test_headline_compares_jscc_with_the_noiseless_model_and_digital_baselines(
    tiny_model, tiny_jscc
):
    from semlink.models.data import load_digits_canvas
    from semlink.models.eval_jscc import format_headline, headline_comparison

    test = load_digits_canvas("test")
    test.images, test.labels = test.images[:40], test.labels[:40]
    generous = headline_comparison(tiny_jscc, tiny_model, test, point=(30.0, 1.0, 1.0))
    assert generous["token_value_bits"] >= 1  # at 30 dB and full rate the tokens fit digitally
    tight = headline_comparison(tiny_jscc, tiny_model, test)  # 10 dB, alpha 0.25, r 1/8
    assert tight["token_value_bits"] < 1 and tight["accuracy"]["tokens-digital"] == 0.1
    for h in (generous, tight):
        assert set(h["accuracy"]) == {"noiseless", "jscc", "tokens-digital", "jpeg"}
        assert h["n"] == 40 and set(h["jscc_minus"]) == {"noiseless", "tokens-digital", "jpeg"}
    assert "JSCC minus this" in format_headline(tight)
    # the coder's figure averages several noise draws per image: the expected accuracy
    assert tight["noise_draws"] == 8 and "8 noise draws" in format_headline(tight)
    with pytest.raises(ValueError, match="draws"):
        headline_comparison(tiny_jscc, tiny_model, test, draws=0)


def test_the_coders_accuracy_is_the_mean_over_fresh_noise_draws():
    """On the shipped digits-canvas coder (a trained one: an untrained coder's answers do not
    move with the noise), at -10 dB where the noise flips some answers."""
    from semlink.models import semcom
    from semlink.models.data import load_digits_canvas
    from semlink.models.eval_jscc import jscc_right

    zoo = Path(__file__).resolve().parents[2] / "zoo"
    model, _ = semcom.load(zoo / "digits-vit-jscc" / "1" / "checkpoint.pt")
    test = load_digits_canvas("test")
    x, y = torch.from_numpy(test.images[:64]), test.labels[:64]
    with torch.no_grad():
        out = model.vit.forward_device(x, torch.full((64,), 0.25))
        tokens = model.vit.select(out.tokens, out.key, 9)[0]
    args = (model, tokens, 4, -10.0, "awgn")
    three = jscc_right(*args, torch.Generator().manual_seed(0), y, draws=3)
    gen = torch.Generator().manual_seed(0)
    singles = [jscc_right(*args, gen, y) for _ in range(3)]
    assert all(set(np.unique(s)) <= {0.0, 1.0} for s in singles)
    assert not all(np.array_equal(singles[0], s) for s in singles[1:])  # the noise is fresh
    assert np.allclose(three, np.mean(singles, axis=0))
    assert any(0 < v < 1 for v in three)  # an image right in some draws, wrong in others


def test_baselines_keep_colour_and_round_trip_the_normalisation():
    from semlink.models.scene import SCENE_MEAN, SCENE_STD

    rng = np.random.default_rng(0)
    pixels = (rng.random((2, 32, 32, 3)) * 255).astype(np.uint8)
    images = baselines.from_uint8(pixels, SCENE_MEAN, SCENE_STD)
    assert images.shape == (2, 3, 32, 32)
    assert np.array_equal(baselines.to_uint8(images, SCENE_MEAN, SCENE_STD), pixels)
    rec = baselines.jpeg_at_budget(pixels[0], 8 * 20_000)
    assert rec is not None and rec.shape == (32, 32, 3)
    # raw pixels: three bytes a pixel, so a 4x4 image's worth of bits gives 4x4 in colour
    assert baselines.raw_digital(pixels[0], 8 * 3 * 16).shape == (32, 32, 3)
    assert baselines.raw_digital(pixels[0], 8 * 2) is None
    out, ok = baselines.reconstruct("raw-analog", pixels, 0.01, 10.0)
    assert ok.all() and out.shape == pixels.shape and out.dtype == np.uint8


def test_train_jscc_fine_tunes_a_trained_coder_and_refuses_one_of_another_selector(
    tiny_checkpoint, tiny_jscc_checkpoint, tiny_jscc, tmp_path, capsys
):
    """--init-from starts from a trained coder (no step taken: its weights come back as they
    were); a coder fitted to another selector's tokens is refused before any training."""
    import torch

    from semlink.models import checkpoint

    argv = ["train", "jscc", "--init-from", str(tiny_jscc_checkpoint)]
    argv += ["--jscc.symbols", "16", "--jscc.hidden", "32", "--epochs", "1", "--max-steps", "0"]
    argv += ["--limit-train", "32", "--batch-size", "16"]
    out = tmp_path / "ft.pt"
    assert main([*argv, "--selector-checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    model, _ = semcom.load(out)
    for name, value in tiny_jscc.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name

    other = checkpoint.load(tiny_checkpoint)
    other["state_dict"] = {
        k: v + 0.01 if "patch_embed" in k else v for k, v in other["state_dict"].items()
    }
    other_path = tmp_path / "other.pt"
    torch.save(other, other_path)
    bad = tmp_path / "bad.pt"
    assert main([*argv, "--selector-checkpoint", str(other_path), "--out", str(bad)]) == 2
    assert "another selector ViT" in capsys.readouterr().err and not bad.exists()


def test_baselines_are_reused_only_from_an_eval_of_the_same_classifier_and_data(
    tiny_model, tmp_path
):
    """``eval jscc --baselines-from`` takes the rows of an earlier run whose classifier weights,
    images, grid and seed hash the same; any difference is refused and named."""
    import copy

    from semlink.models.data import load_digits_canvas
    from semlink.models.eval_jscc import baseline_grid, baselines_key, reuse_baselines

    test = load_digits_canvas("test")
    test.images, test.labels = test.images[:24], test.labels[:24]
    snrs, uses = (10.0,), (0.01, 0.2)
    rows = baseline_grid(tiny_model, test, snrs, uses)
    assert len(rows) == len(baselines.METHODS) * len(snrs) * len(uses)
    key = baselines_key(tiny_model, test, snrs, uses)
    earlier = tmp_path / "eval.json"
    semlink_row = {"method": "semlink", "snr_db": 10.0, "accuracy": 0.5}
    earlier.write_text(json.dumps({"grid": [semlink_row, *rows], "baselines_key": key}))
    assert reuse_baselines(earlier, baselines_key(tiny_model, test, snrs, uses)) == rows

    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.head.bias.add_(0.01)
    with pytest.raises(ValueError, match="classifier_sha256"):
        reuse_baselines(earlier, baselines_key(other, test, snrs, uses))
    shifted = copy.copy(test)
    shifted.images = test.images[::-1].copy()
    with pytest.raises(ValueError, match="data_sha256"):
        reuse_baselines(earlier, baselines_key(tiny_model, shifted, snrs, uses))
    with pytest.raises(ValueError, match="seed"):
        reuse_baselines(earlier, baselines_key(tiny_model, test, snrs, uses, seed=1))
    earlier.write_text(json.dumps({"grid": rows}))  # an eval from before the key
    with pytest.raises(ValueError, match="does not say"):
        reuse_baselines(earlier, key)


def test_jscc_evaluation_measures_every_grid_and_reuses_baselines(tiny_jscc, tiny_model, tmp_path):
    """``semlink eval jscc``'s body (models.eval_jscc.evaluate) on 8 test images: the coder's
    grid, the summary and the headline, with the baseline rows of an earlier run of the same
    classifier and data (measuring them is tested above)."""
    from semlink.models.data import load_digits_canvas
    from semlink.models.eval_jscc import ALPHAS, SNRS, baselines_key, evaluate
    from semlink.models.jscc import RATES

    test = load_digits_canvas("test")
    test.images, test.labels = test.images[:8], test.labels[:8]
    jpeg = [
        {"method": "jpeg", "snr_db": snr, "channel_uses": 0.01, "accuracy": 0.5} for snr in SNRS
    ]
    earlier = tmp_path / "eval.json"
    key = baselines_key(tiny_model, test)
    earlier.write_text(json.dumps({"grid": jpeg, "baselines_key": key}))
    result = evaluate(
        tiny_jscc, tiny_model, test, "awgn", 0, tmp_path / "none", baselines_from=earlier, draws=1
    )
    semlink_rows = [r for r in result["grid"] if r["method"] == "semlink"]
    assert len(semlink_rows) == len(SNRS) * len(ALPHAS) * len(RATES)
    assert [r for r in result["grid"] if r["method"] != "semlink"] == jpeg
    assert result["n_test"] == 8 and 0 <= result["reference_accuracy"] <= 1
    assert {"summary", "headline", "baselines_key"} <= set(result)
    with pytest.raises(ValueError, match="seed"):  # refused before any work
        evaluate(tiny_jscc, tiny_model, test, "awgn", 1, tmp_path, baselines_from=earlier)
