"""A vision transformer that can answer or hand over after any of its device blocks: every option
of a frame in one network (docs/methods.md#any-split).

The device holds blocks ``0..device_blocks-1`` with an exit head after each; after each of them
(each *split* ``s``) it may instead offload the patch tokens a budget-conditioned selector keeps,
as int8 tokens or through that split's nested JSCC coder; or the camera uploads the picture and
the server runs the whole network on it. The option set of one frame:

- ``exit k`` (k = 1..device_blocks): the device runs blocks ``0..k-1`` and answers from exit k;
- ``offload s, alpha[, r]``: the device runs blocks ``0..s-1``, keeps ``ceil(alpha N)`` patch
  tokens by its selector's key and sends them (int8, or JSCC symbols at rate ``r``); the server
  finishes with blocks ``s..depth-1`` behind its own class token;
- ``full``: the whole network on all tokens (the server's answer to an uploaded JPEG).

Where it departs from the single-split selector ViT of :mod:`models.vit` (and why):

- The budget conditions the *selector*, not the device blocks. The selector of split ``s`` scores
  each patch token with a small MLP of the token and the budget token
  ``alpha * b_lo + (1 - alpha) * b_hi``: the device's activations, and so its exits, are the same
  for every budget, so a device that ran to exit k can still offload there at any budget without
  running anything again. (Gating the device blocks, as the single-split model does, would tie
  every exit to a budget chosen before the first block.)
- One server class token per split (the device's own class token stays home, as in
  :mod:`models.vit`: it has attended to every patch, and sending it would leak what selection
  withholds); the tails share the blocks, the final norm and the head with the full network.
- Exits are recursive among the device's exits (:mod:`models.early_exit`); the tails and the full
  network answer by themselves, without the device's log p.

Shapes: ``N`` patch tokens, width ``d``; activations are (B, 1+N, d), the class token first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from semlink.models.early_exit import EarlyExitNet, ExitHead
from semlink.models.jscc import JSCC, JSCCConfig
from semlink.models.vit import NEG_INF, Block, PatchEmbed, ViTConfig, num_kept


@dataclass
class AnySplitConfig:
    image_size: int = 48
    in_chans: int = 1
    num_classes: int = 10
    patch_size: int = 8
    embed_dim: int = 64
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    device_blocks: int = 2
    """The device holds blocks ``0..device_blocks-1``: an exit after each, and a split after each."""
    recursive: bool = True
    """Recursive device exits: exit k mixes in exit k-1's log p (docs/methods.md#early-exits)."""
    beta: float = 0.5
    """Initial scale of the mixing matrices ``W_k = beta * I``."""
    selector_hidden: int = 64
    """Width of each split's selector MLP."""
    jscc_symbols: int = 0
    """Complex symbols per token at rate 1 (``d_c``) of each split's coder; 0: the embedding width."""
    jscc_hidden: int = 256
    """Width of the coders' MLPs."""

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 1 <= self.device_blocks < self.depth:
            raise ValueError(
                f"device_blocks must be in [1, depth-1] = [1, {self.depth - 1}], "
                f"got {self.device_blocks}"
            )
        if self.jscc_symbols < 0:
            raise ValueError(f"jscc_symbols must be >= 0, got {self.jscc_symbols}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def splits(self) -> tuple[int, ...]:
        """Block counts after which the device may offload tokens (and has an exit)."""
        return tuple(range(1, self.device_blocks + 1))

    @property
    def symbols(self) -> int:
        """``d_c``: complex symbols per token at rate 1."""
        return self.jscc_symbols or self.embed_dim

    def vit_config(self) -> ViTConfig:
        """The stem's configuration (the conv stem of :mod:`models.vit`)."""
        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            num_classes=self.num_classes,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            split=1,
        )

    def jscc_config(self) -> JSCCConfig:
        """Each split's coder: nested, SNR-adaptive."""
        return JSCCConfig(embed_dim=self.embed_dim, symbols=self.symbols, hidden=self.jscc_hidden)


class BudgetSelector(nn.Module):
    """Key of every patch token at one split for a budget: ``MLP(LN(x) W_x + b(alpha) W_b)``.

    ``b(alpha) = alpha * b_lo + (1 - alpha) * b_hi`` is the budget token; the device keeps the
    top-``ceil(alpha N)`` patches by key. The output layer starts at zero (every key equal), and
    the ranking is learned from the full network's class attention.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.budget_lo = nn.Parameter(torch.zeros(dim))
        self.budget_hi = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.budget_lo, std=0.02)
        nn.init.trunc_normal_(self.budget_hi, std=0.02)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.token = nn.Linear(dim, hidden)
        self.budget = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, patches: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``patches`` (B, N, d), ``alpha`` (B,) -> keys (B, N), higher kept first."""
        a = alpha.reshape(-1, 1).to(patches.dtype)
        b = a * self.budget_lo + (1.0 - a) * self.budget_hi  # (B, d)
        h = self.token(self.norm(patches)) + self.budget(b)[:, None, :]
        return self.out(F.gelu(h)).squeeze(-1)


class AnySplitViT(nn.Module):
    """Stem, blocks, device exits, a selector, a server class token and a JSCC coder per split,
    and the final norm and head shared by the tails and the full network."""

    def __init__(self, cfg: AnySplitConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n_dev = cfg.embed_dim, cfg.device_blocks
        self.patch_embed = PatchEmbed(cfg.vit_config())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.num_classes)
        self.exits = nn.ModuleList(ExitHead(d, cfg.num_classes) for _ in range(n_dev))
        eye = torch.eye(cfg.num_classes) * cfg.beta
        self.mix = nn.ParameterList(nn.Parameter(eye.clone()) for _ in range(n_dev - 1))
        if not cfg.recursive:
            self.mix.requires_grad_(False)
        self.server_cls = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, d)) for _ in cfg.splits)
        self.selectors = nn.ModuleList(BudgetSelector(d, cfg.selector_hidden) for _ in cfg.splits)
        self.coders = nn.ModuleList(JSCC(cfg.jscc_config()) for _ in cfg.splits)

    def coder(self, s: int) -> JSCC:
        """Split ``s``'s JSCC coder."""
        coder = self.coders[s - 1]
        assert isinstance(coder, JSCC)
        return coder
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for p in self.server_cls:
            nn.init.trunc_normal_(p, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and name.startswith(("blocks", "head", "exits")):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # --- the device's part ------------------------------------------------------------------

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Class and patch tokens with the positional embedding, (B, 1+N, d)."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def exit_logp(self, k: int, x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """Log p (B, C) of exit ``k`` (after block k, 1-based) on the activations after block k;
        ``prev`` is exit k-1's log p (None for the first exit)."""
        z = self.exits[k - 1](x[:, 0])
        if self.cfg.recursive and prev is not None and k > 1:
            z = z + prev @ self.mix[k - 2].T
        return F.log_softmax(z, dim=-1)

    def step(
        self, k: int, x: torch.Tensor, prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The device's stretch to exit ``k``: block k-1 on the activations after block k-1 (the
        image for ``k == 1``, stem first). Returns the activations after block k and exit k's log p."""
        if k == 1:
            x = self.embed(x)
        x, _ = self.blocks[k - 1](x)
        return x, self.exit_logp(k, x, prev)

    def selector_key(self, s: int, activations: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Keys (B, N) of the patch tokens after block ``s`` for budgets ``alpha`` (B,)."""
        return self.selectors[s - 1](activations[:, 1:], alpha)

    # --- the server's part ------------------------------------------------------------------

    def tail(
        self, s: int, patches: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Blocks ``s..depth-1`` on the patch tokens that arrived (B, T, d), behind split s's
        class token -> logits (B, C). ``token_mask`` (B, T): 1 for a real token, 0 for padding."""
        cls = self.server_cls[s - 1].expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1)
        if token_mask is not None:
            token_mask = torch.cat([torch.ones_like(token_mask[:, :1]), token_mask], dim=1)
        for blk in self.blocks[s:]:
            x, _ = blk(x, token_mask)
        return self.head(self.norm(x[:, 0]))

    def full(self, images: torch.Tensor) -> torch.Tensor:
        """The whole network on every token (the server's answer to an uploaded picture)."""
        x = self.embed(images)
        for blk in self.blocks:
            x, _ = blk(x)
        return self.head(self.norm(x[:, 0]))

    # --- training ---------------------------------------------------------------------------

    def forward_all(self, images: torch.Tensor) -> AllOutputs:
        """One pass of the whole network on every token, keeping what training reads: the full
        logits, every device exit's log p, the activations at every split, and the class
        attention over patches of every block (B, N)."""
        x = self.embed(images)
        acts: dict[int, torch.Tensor] = {}
        exits: list[torch.Tensor] = []
        attn: list[torch.Tensor] = []
        prev = None
        for i, blk in enumerate(self.blocks):
            x, cls_attn = blk(x)
            attn.append(cls_attn[:, 1:])
            k = i + 1
            if k <= self.cfg.device_blocks:
                prev = self.exit_logp(k, x, prev)
                exits.append(prev)
                acts[k] = x
        return AllOutputs(self.head(self.norm(x[:, 0])), exits, acts, attn)

    def forward_device(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """The device's blocks only: the activations at every split (B, 1+N, d)."""
        x = self.embed(images)
        acts = {}
        for k in self.cfg.splits:
            x, _ = self.blocks[k - 1](x)
            acts[k] = x
        return acts

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The full network's logits."""
        return self.full(images)


@dataclass
class AllOutputs:
    logits: torch.Tensor  # (B, C) the full network
    exits: list[torch.Tensor]  # log p (B, C) of device exits 1..device_blocks
    activations: dict[int, torch.Tensor]  # split s -> (B, 1+N, d) after block s
    cls_attn: list[torch.Tensor]  # per block: class attention over patches (B, N)


def keep_top(key: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of the ``k`` highest keys, highest first."""
    return key.topk(k, dim=1).indices


def gather_patches(activations: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Patch tokens (B, k, d) at patch indices ``idx`` (B, k) from activations (B, 1+N, d)."""
    patches = activations[:, 1:]
    return patches.gather(1, idx[..., None].expand(-1, -1, patches.shape[-1]))


def masked_mean_attention(attn: list[torch.Tensor], start: int) -> torch.Tensor:
    """The class attention over patches of blocks ``start..``, averaged and normalised (B, N): how
    much the full network reads each patch after a split at ``start`` (the selector's target)."""
    imp = torch.stack(attn[start:]).mean(0)
    return imp / imp.sum(1, keepdim=True)


# --- growing a trained network into a bigger one ------------------------------------------


def grow_from_early_exit(model: AnySplitViT, source: EarlyExitNet, noise: float = 1e-3) -> None:
    """Initialises ``model`` from a trained early-exit ViT (:class:`models.early_exit.EarlyExitNet`)
    so that its full network and device exits compute what the source's do, however much wider
    (an integer factor) and deeper it is (function-preserving growth, as Net2Net and bert2BERT do).

    Wider: every channel of the source appears ``f`` times (LayerNorm statistics are unchanged by
    repeating a vector's entries; a linear layer's weights are split among the copies of each
    input), heads are repeated, so attention is the same. Deeper: the source's device blocks keep
    their places, its later blocks spread over the new depth, and every new block starts as the
    identity (its attention and MLP outputs zero). The new tails, class tokens and selectors keep
    their fresh initialisation; ``noise`` (relative) breaks the symmetry between copies.
    """
    cfg = model.cfg
    scfg = source.cfg
    if scfg.backbone != "vit":
        raise ValueError("growth needs a ViT early-exit network, got a CNN backbone")
    d0, d = scfg.embed_dim, cfg.embed_dim
    if d % d0 or cfg.num_heads != scfg.num_heads * (d // d0):
        raise ValueError(
            f"width {d} must be a multiple f of the source's {d0}, with f times its heads "
            f"({scfg.num_heads * max(d // d0, 1)}), got {cfg.num_heads} heads"
        )
    if cfg.depth < scfg.depth or cfg.device_blocks > scfg.depth:
        raise ValueError(
            f"the grown network needs at least the source's depth {scfg.depth} and at most "
            f"{scfg.depth} device blocks; got depth {cfg.depth}, {cfg.device_blocks} device blocks"
        )
    if (cfg.image_size, cfg.patch_size, cfg.in_chans) != (
        scfg.image_size,
        scfg.patch_size,
        scfg.in_chans,
    ):
        raise ValueError("the grown network must see the same images with the same patches")
    exits = scfg.exits or ()
    missing = [k for k in cfg.splits if k not in exits]
    if missing:
        raise ValueError(f"the source has no exit after block(s) {missing} to start exits from")
    f = d // d0
    src = source.state_dict()
    new = model.state_dict()
    width = _Widen(f, d0, scfg.num_heads)

    def put(name: str, value: torch.Tensor) -> None:
        if new[name].shape != value.shape:
            raise AssertionError(
                f"{name}: grown {tuple(value.shape)}, wants {tuple(new[name].shape)}"
            )
        if not value.is_floating_point() or value.numel() < 2:
            new[name] = value.clone()  # counters, and nothing to break symmetry between
            return
        new[name] = value + noise * float(value.std()) * torch.randn_like(value)

    # the stem: every conv's output channels repeated f times (BatchNorm per channel alike)
    for name, value in src.items():
        if name.startswith("backbone.patch_embed."):
            put(name.removeprefix("backbone."), width.conv_or_norm(name, value))
    put("cls_token", width.vector(src["backbone.cls_token"]))
    put("pos_embed", width.vector(src["backbone.pos_embed"]))
    for j, i in block_placement(scfg.depth, cfg.depth, cfg.device_blocks).items():
        for name, value in src.items():
            prefix = f"backbone.blocks.{j}."
            if name.startswith(prefix):
                put(f"blocks.{i}." + name.removeprefix(prefix), width.block(name, value))
    placed = set(block_placement(scfg.depth, cfg.depth, cfg.device_blocks).values())
    for i in set(range(cfg.depth)) - placed:  # a new block: the identity at first
        for part in ("attn.proj", "mlp.fc2"):
            new[f"blocks.{i}.{part}.weight"].zero_()
            new[f"blocks.{i}.{part}.bias"].zero_()
    exit_of = {e: j for j, e in enumerate(exits)}
    for k in cfg.splits:
        j = exit_of[k]
        put(f"exits.{k - 1}.norm.weight", width.vector(src[f"heads.{j}.norm.weight"]))
        put(f"exits.{k - 1}.norm.bias", width.vector(src[f"heads.{j}.norm.bias"]))
        put(f"exits.{k - 1}.fc.weight", width.into(src[f"heads.{j}.fc.weight"]))
        new[f"exits.{k - 1}.fc.bias"] = src[f"heads.{j}.fc.bias"].clone()
        if k > 1:
            new[f"mix.{k - 2}"] = src[f"mix.{j - 1}"].clone()
    last = len(exits) - 1
    put("norm.weight", width.vector(src[f"heads.{last}.norm.weight"]))
    put("norm.bias", width.vector(src[f"heads.{last}.norm.bias"]))
    put("head.weight", width.into(src[f"heads.{last}.fc.weight"]))
    new["head.bias"] = src[f"heads.{last}.fc.bias"].clone()
    model.load_state_dict(new)


def block_placement(source_depth: int, depth: int, device_blocks: int) -> dict[int, int]:
    """Where each source block goes in a network of ``depth`` blocks: the device's blocks stay,
    the later ones spread evenly over the rest (the last stays last)."""
    later = source_depth - device_blocks
    place = {j: j for j in range(device_blocks)}
    for n, j in enumerate(range(device_blocks, source_depth), start=1):
        place[j] = device_blocks + round(n * (depth - device_blocks) / later) - 1
    return place


class _Widen:
    """Net2Net-style widening by an integer factor ``f``: new channel ``c`` is old ``c mod d0``
    (the residual stream), and within attention new head ``h`` is old head ``h mod heads``."""

    def __init__(self, f: int, d0: int, heads: int) -> None:
        self.f, self.d0, self.heads = f, d0, heads

    def vector(self, v: torch.Tensor) -> torch.Tensor:
        """A tensor whose last axis is the residual stream (LayerNorm, tokens)."""
        return v.repeat(*([1] * (v.ndim - 1)), self.f)

    def into(self, w: torch.Tensor) -> torch.Tensor:
        """A linear layer's weight (out, d0) reading the residual stream: split among copies."""
        return w.repeat(1, self.f) / self.f

    def both(self, w: torch.Tensor) -> torch.Tensor:
        """A linear layer's weight (d0*, d0*) from and to widened axes (repeated in both)."""
        return w.repeat(self.f, self.f) / self.f

    def heads_out(self, w: torch.Tensor, parts: int) -> torch.Tensor:
        """The output axis of ``parts`` stacked (heads x head size) blocks (qkv: 3), each head
        repeated: (parts * heads * hs, ...) -> (parts * f * heads * hs, ...)."""
        hs = w.shape[0] // (parts * self.heads)
        w = w.reshape(parts, self.heads, hs, *w.shape[1:])
        w = w.repeat(1, self.f, *([1] * (w.ndim - 2)))
        return w.reshape(parts * self.f * self.heads * hs, *w.shape[3:])

    def block(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """One transformer block parameter, widened."""
        if name.endswith(("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")):
            return self.vector(w)
        if name.endswith("attn.qkv.weight"):
            return self.heads_out(self.into(w), 3)
        if name.endswith("attn.qkv.bias"):
            return self.heads_out(w, 3)
        if name.endswith("attn.proj.weight"):  # input: repeated heads; output: the stream
            return w.repeat(self.f, self.f) / self.f
        if name.endswith(("attn.proj.bias", "mlp.fc2.bias")):
            return self.vector(w)
        if name.endswith("mlp.fc1.weight"):
            return self.into(w).repeat(self.f, 1)
        if name.endswith("mlp.fc1.bias"):
            return w.repeat(self.f)
        if name.endswith("mlp.fc2.weight"):
            return self.both(w)
        raise ValueError(f"no widening rule for {name}")

    def conv_or_norm(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """A stem parameter: output channels repeated; input channels too, split among copies
        (but the first conv's, which reads the image)."""
        if w.ndim == 0:  # BatchNorm's num_batches_tracked
            return w
        if w.ndim == 1:  # BatchNorm or conv bias: per output channel
            return w.repeat(self.f)
        w = w.repeat(self.f, 1, 1, 1)
        return w if name.endswith("stem.0.weight") else w.repeat(1, self.f, 1, 1) / self.f


def count_flops(model: AnySplitViT) -> dict[str, object]:
    """FLOPs per image (torch's ``FlopCounterMode``: matmuls and convolutions, 2 per
    multiply-accumulate) of every stretch: ``steps`` (stem and block 1, then each device block
    with its exit), ``select`` (each split's selector), ``tails`` (each split's server part on
    every token), ``full`` (the whole network)."""
    cfg = model.cfg
    image = torch.zeros(1, cfg.in_chans, cfg.image_size, cfg.image_size)

    def flops(fn: object, *args: object) -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn(*args)  # type: ignore[operator]
        return int(counter.get_total_flops())

    model.eval()
    steps, select, tails = [], [], []
    x, prev = image, None
    alpha = torch.ones(1)
    for k in cfg.splits:
        steps.append(flops(model.step, k, x, prev))
        with torch.no_grad():
            x, prev = model.step(k, x, prev)
        select.append(flops(model.selector_key, k, x, alpha))
        tails.append(flops(model.tail, k, x[:, 1:]))
    return {"steps": steps, "select": select, "tails": tails, "full": flops(model.full, image)}


def config_from_dict(d: dict) -> AnySplitConfig:
    """Rebuilds a config from a checkpoint, refusing fields this version does not know."""
    unknown = set(d) - set(AnySplitConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"checkpoint config has fields {sorted(unknown)} that AnySplitConfig does not know"
        )
    return AnySplitConfig(**d)


def config_dict(cfg: AnySplitConfig) -> dict:
    """The config as a checkpoint stores it."""
    return asdict(cfg)


__all__ = [
    "AllOutputs",
    "AnySplitConfig",
    "AnySplitViT",
    "BudgetSelector",
    "NEG_INF",
    "block_placement",
    "config_dict",
    "config_from_dict",
    "count_flops",
    "gather_patches",
    "grow_from_early_exit",
    "keep_top",
    "masked_mean_attention",
    "num_kept",
]
