import pytest
import torch

from semlink.models.selector import budget_loss, hard_keep_mask, sample_budgets
from semlink.models.vit import (
    SelectorViT,
    ViTConfig,
    config_from_dict,
    load_timm_state_dict,
    num_kept,
)


@pytest.mark.parametrize(
    "alpha,k",
    [(0.05, 2), (0.1, 4), (0.15, 6), (0.25, 9), (0.5, 18), (0.75, 27), (1.0, 36), (1e-4, 1)],
)
def test_num_kept_is_ceil_alpha_n(alpha, k):
    assert num_kept(alpha, 36) == k


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan")])
def test_bad_budget_names_the_range(alpha):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        num_kept(alpha, 36)


def test_shapes_and_exact_kept_tokens(tiny_model):
    x = torch.randn(3, 1, 48, 48)
    out = tiny_model.forward_device(x, torch.full((3,), 0.25))
    assert out.tokens.shape == (3, 37, 32) and out.key.shape == (3, 36)
    for alpha in (0.05, 0.15, 0.25, 1.0):
        k = num_kept(alpha, 36)
        kept, idx = tiny_model.select(out.tokens, out.key, k)
        assert kept.shape == (3, k, 32) and idx.shape == (3, k)
        assert idx.unique(dim=1).shape[1] == k
    assert tiny_model(x, 0.15).shape == (3, 10)


def test_key_mask_equals_physical_removal(tiny_model):
    """Masking dropped tokens out of attention gives the same logits as removing them."""
    x = torch.randn(2, 1, 48, 48)
    alpha = torch.full((2,), 0.25)
    with torch.no_grad():
        out = tiny_model.forward_device(x, alpha)
        keep = hard_keep_mask(out.key, alpha)
        masked = tiny_model.forward_tail(out.tokens[:, 1:], keep)
        removed = tiny_model.forward_tail(tiny_model.select(out.tokens, out.key, 9)[0])
    torch.testing.assert_close(masked, removed, atol=1e-5, rtol=1e-4)


def test_selector_init_keeps_every_token(tiny_model):
    fresh = SelectorViT(tiny_model.cfg)
    out = fresh.forward_device(torch.randn(2, 1, 48, 48), torch.full((2,), 0.5))
    assert all(m.min() > 0.95 for m in out.masks)


def test_budget_sampling_covers_the_range():
    a = sample_budgets(64, 0.05, 1.0, torch.Generator().manual_seed(0))
    assert a.min() < 0.1 and a.max() > 0.9 and ((a > 0) & (a < 1)).all()


def test_budget_loss_is_zero_within_margin():
    alpha = torch.tensor([0.5])
    assert budget_loss([torch.full((1, 36), 0.51)], alpha) == 0
    assert budget_loss([torch.full((1, 36), 0.9)], alpha) > 0


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(image_size=50)
    with pytest.raises(ValueError, match="split"):
        ViTConfig(depth=4, split=4)
    with pytest.raises(ValueError, match="ViTConfig does not know"):
        config_from_dict({"embed_dim": 8, "bogus": 1})


def _timm_deit_state_dict(d=192, depth=12, patch=16, img=224, classes=1000):
    """A synthetic state dict with timm's DeiT-Tiny names and shapes."""
    n = (img // patch) ** 2
    sd = {
        "cls_token": torch.randn(1, 1, d),
        "pos_embed": torch.randn(1, n + 1, d),
        "patch_embed.proj.weight": torch.randn(d, 3, patch, patch),
        "patch_embed.proj.bias": torch.randn(d),
        "norm.weight": torch.randn(d),
        "norm.bias": torch.randn(d),
        "head.weight": torch.randn(classes, d),
        "head.bias": torch.randn(classes),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": torch.randn(d),
                p + "norm1.bias": torch.randn(d),
                p + "attn.qkv.weight": torch.randn(3 * d, d),
                p + "attn.qkv.bias": torch.randn(3 * d),
                p + "attn.proj.weight": torch.randn(d, d),
                p + "attn.proj.bias": torch.randn(d),
                p + "norm2.weight": torch.randn(d),
                p + "norm2.bias": torch.randn(d),
                p + "mlp.fc1.weight": torch.randn(4 * d, d),
                p + "mlp.fc1.bias": torch.randn(4 * d),
                p + "mlp.fc2.weight": torch.randn(d, 4 * d),
                p + "mlp.fc2.bias": torch.randn(d),
            }
        )
    return sd


def _deit_tiny_config(**overrides) -> ViTConfig:
    """DeiT-Tiny's architecture with timm's linear patchify."""
    kw = dict(
        image_size=224,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        embed_dim=192,
        depth=12,
        num_heads=3,
        split=4,
        stem="patch",
    )
    return ViTConfig(**{**kw, **overrides})


def test_timm_deit_tiny_state_dict_loads():
    cfg = _deit_tiny_config()
    model = SelectorViT(cfg)
    sd = _timm_deit_state_dict()
    missing = load_timm_state_dict(model, sd)
    assert all(k.startswith(("selectors", "budget_", "server_cls")) for k in missing)
    torch.testing.assert_close(model.blocks[3].attn.qkv.weight, sd["blocks.3.attn.qkv.weight"])


def test_timm_state_dict_resizes_pos_embed_and_rejects_other_widths():
    cfg = _deit_tiny_config(image_size=96)
    model = SelectorViT(cfg)
    load_timm_state_dict(model, _timm_deit_state_dict())
    assert model.pos_embed.shape == (1, 37, 192)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_timm_state_dict(SelectorViT(_deit_tiny_config(embed_dim=96)), _timm_deit_state_dict())


def test_conv_stem_gives_the_same_token_grid():
    m = SelectorViT(ViTConfig(stem="conv"))
    assert m.patch_embed(torch.randn(1, 1, 48, 48)).shape == (1, 36, 96)


def test_bad_images_name_the_expected_form(tiny_model):
    with pytest.raises(ValueError, match=r"shape \(B, 1, 48, 48\)"):
        tiny_model(torch.zeros(1, 3, 48, 48), 0.5)
    with pytest.raises(ValueError, match="float tensor"):
        tiny_model(torch.zeros(1, 1, 48, 48, dtype=torch.uint8), 0.5)
