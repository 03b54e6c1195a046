"""Split learning of a ViT with an explicit message boundary, and what compresses the message:
ADC (docs/methods.md#adc) and its baselines.

The device runs the embedding and blocks ``0..s-1``; the server runs the rest. The only things
that cross the boundary are the forward message (activations, and the labels the server's loss
needs) and the backward message (the gradient of the loss with respect to exactly that tensor);
:class:`Boundary` counts both in bytes and can pass both through an AWGN channel. Each compressor
maps the device's activations to a smaller, differentiable message, so the device's backward pass
runs through the same reduction and the gradient it receives has the message's shape.

ADC (Alvetreti et al., 2025): *batch merging* clusters the batch by class-token attention with
k-means into ``T = max(2, floor(sqrt(xi) * B))`` groups and sends each group's mean activations
with the mean of its one-hot labels as a soft label; *token dropping* keeps each merged sample's
top ``k`` patch tokens by the centroid's attention, ``k = max(2, floor(sqrt(xi) * N))``. So
``T/B = k/N = sqrt(xi)`` and the message is ``xi`` of the full one (not the public code's
``xi^(3/4)``). The class token is not sent: the server's tail has its own (``SelectorViT``'s
split), so where the paper keeps "the class token and the top ``k - 1``", this keeps the top
``k`` patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semlink.models.vit import SelectorViT
from semlink.runtime import channel

FP32_BYTES = 4
LABEL_BYTES = 1  # a hard label, one byte (classes <= 256)


class SplitViT(nn.Module):
    """A pretrained :class:`SelectorViT` cut where it was trained to be cut, at full budget:
    :meth:`device` runs the embedding and the device blocks, :meth:`server` the tail, which
    brings its own class token (so the message is patch tokens only)."""

    def __init__(self, vit: SelectorViT) -> None:
        super().__init__()
        self.vit = vit

    def device(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch activations (B, N, d) after the device's blocks, and the last device block's
        class-token attention over them (B, N), mean over heads."""
        out = self.vit.forward_device(images, torch.ones(len(images)))
        return out.tokens[:, 1:], out.cls_attn

    def server(self, patches: torch.Tensor) -> torch.Tensor:
        """Logits from any subset of patch activations (B', T', d) (they carry their positional
        embedding)."""
        return self.vit.forward_tail(patches)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.server(self.device(images)[0])


@dataclass
class Message:
    """What crosses the boundary forward: ``tensor`` (part of the device's autograd graph) and
    the labels the server's loss needs (soft labels, (T, classes))."""

    tensor: torch.Tensor
    labels: torch.Tensor
    bytes_up: int
    bits: int = 32  # per element of ``tensor`` and of its gradient

    @property
    def bytes_down(self) -> int:
        return math.ceil(self.tensor.numel() * self.bits / 8)


def tensor_bytes(t: torch.Tensor, bits: int = 32) -> int:
    return math.ceil(t.numel() * bits / 8)


def sqrt_split(xi: float, batch: int, tokens: int, share: float = 0.5) -> tuple[int, int]:
    """ADC's ``(T, k)`` for compression ``xi``: ``T/B = xi^share`` and ``k/N = xi^(1 - share)``,
    at least 2 each. docs/methods.md#adc's split is ``share = 0.5``: ``T/B = k/N = sqrt(xi)``; ``share = 0``
    puts all of it on the tokens (no merging), ``1`` all of it on the samples."""
    if not 0.0 < xi <= 1.0:
        raise ValueError(f"compression ratio xi must be in (0, 1], got {xi}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share of the compression on the samples must be in [0, 1], got {share}")
    rb, rn = xi**share, xi ** (1.0 - share)
    return max(2, min(batch, math.floor(rb * batch))), max(2, min(tokens, math.floor(rn * tokens)))


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Cluster index (B,) of each row of ``x`` (B, D): k-means++ seeding, Lloyd iterations.
    Clusters never end empty: an emptied centroid is re-seeded at the farthest point."""
    g = torch.Generator().manual_seed(seed)
    x = x.detach().float()
    centres = x[torch.randint(len(x), (1,), generator=g)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(dim=1).values ** 2
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        centres = torch.cat([centres, x[torch.multinomial(p, 1, generator=g)]])
    assign = torch.zeros(len(x), dtype=torch.long)
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(dim=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(dim=0)
            else:  # re-seed at the point farthest from its centre
                far = (x - centres[assign]).norm(dim=1).argmax()
                centres[j], assign[far] = x[far], j
    return assign


def keep_tokens(acts: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The top ``k`` tokens of each sample by ``scores`` (B, N), in their original order:
    (B, k, d)."""
    idx = scores.topk(k, dim=1).indices.sort(dim=1).values
    return acts.gather(1, idx[..., None].expand(-1, -1, acts.shape[-1]))


class Compressor:
    """Maps the device's activations to the forward :class:`Message`."""

    name = "uncompressed"
    shape_fixed = True  # the message's shape depends on the batch's size alone

    def __init__(self, xi: float = 1.0) -> None:
        self.xi = xi

    def __call__(self, acts: torch.Tensor, attn: torch.Tensor, onehot: torch.Tensor) -> Message:
        return Message(acts, onehot, tensor_bytes(acts) + len(acts) * LABEL_BYTES)

    def backward_message(self, grad: torch.Tensor, msg: Message) -> torch.Tensor:
        """The gradient as it crosses back (the same format as the forward message)."""
        return grad


def class_groups(attn: torch.Tensor, labels: torch.Tensor, t: int) -> torch.Tensor:
    """Group index (B,) of each sample when ``t`` groups are shared out among the classes of the
    batch in proportion to their counts (at least one each; largest remainders first) and each
    class is clustered by k-means on its attention: no group mixes two labels."""
    classes, counts = labels.unique(return_counts=True)
    if t < len(classes):
        raise ValueError(
            f"class-pure merging needs at least one group per class in the batch: {t} groups "
            f"for {len(classes)} classes; raise xi or the batch size"
        )
    quota = counts.double() * (t - len(classes)) / counts.sum()
    per = 1 + quota.floor().long()
    for i in (quota - quota.floor()).argsort(descending=True)[: t - int(per.sum())]:
        per[i] += 1
    per = torch.minimum(per, counts)  # never more groups than members
    assign = torch.empty(len(labels), dtype=torch.long)
    start = 0
    for c, n in zip(classes.tolist(), per.tolist(), strict=True):
        members = (labels == c).nonzero().flatten()
        sub = kmeans(attn[members], n) if n > 1 else torch.zeros(len(members), dtype=torch.long)
        assign[members] = start + sub
        start += n
    return assign


class ADC(Compressor):
    """Batch merging by class-attention k-means, then token dropping by centroid attention.

    The defaults are docs/methods.md#adc's ADC. The variants that ``semlink bench split`` studies (why
    top-k tokens alone beat it on camera frames) change one thing each:

    - ``share``: the exponent of the samples' part, ``T/B = xi^share``, ``k/N = xi^(1-share)``
      (0.5 is docs/methods.md#adc's square-root split);
    - ``merge="class"``: the k-means runs within each label of the batch (the device holds the
      labels: it sends them), so a merged sample never averages two digits and its label is pure;
    - ``hard_labels``: each merged sample is sent with its majority label instead of the mean of
      its members' one-hot labels.
    """

    name = "adc"

    def __init__(
        self, xi: float, share: float = 0.5, merge: str = "attention", hard_labels: bool = False
    ) -> None:
        super().__init__(xi)
        if merge not in ("attention", "class"):
            raise ValueError(f"merge must be 'attention' or 'class', got {merge!r}")
        self.share, self.merge, self.hard_labels = share, merge, hard_labels
        self.shape_fixed = merge == "attention"  # class merging: groups depend on the labels

    def __call__(self, acts: torch.Tensor, attn: torch.Tensor, onehot: torch.Tensor) -> Message:
        B, T1, _ = acts.shape
        t, k = sqrt_split(self.xi, B, T1, self.share)
        if self.merge == "class":
            assign = class_groups(attn.detach(), onehot.argmax(dim=1), t)
            t = int(assign.max()) + 1  # fewer when a class has fewer members than its quota
        else:
            assign = kmeans(attn, t)
        groups = F.one_hot(assign, t).T.to(acts.dtype)  # (t, B)
        weights = groups / groups.sum(dim=1, keepdim=True)
        merged = torch.einsum("tb,bnd->tnd", weights, acts)
        centroid_attn = weights @ attn.detach()
        soft = weights @ onehot
        if self.hard_labels:  # ties go to the lower label
            soft = F.one_hot(soft.argmax(dim=1), onehot.shape[1]).to(soft.dtype)
        sent = keep_tokens(merged, centroid_attn, k)
        label_bytes = len(soft) * LABEL_BYTES if self.hard_labels else tensor_bytes(soft)
        return Message(sent, soft, tensor_bytes(sent) + label_bytes)


class TopK(Compressor):
    """No merging; each sample keeps ``k`` tokens, ``k/N = xi``: the top ones by class
    attention, or random ones."""

    def __init__(self, xi: float, random: bool = False, seed: int = 0) -> None:
        super().__init__(xi)
        self.random = random
        self.name = "random-k" if random else "top-k"
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, acts: torch.Tensor, attn: torch.Tensor, onehot: torch.Tensor) -> Message:
        k = max(1, min(acts.shape[1], math.floor(self.xi * acts.shape[1])))
        scores = torch.rand(attn.shape, generator=self.g) if self.random else attn.detach()
        sent = keep_tokens(acts, scores, k)
        return Message(sent, onehot, tensor_bytes(sent) + len(acts) * LABEL_BYTES)


class _Quantise(torch.autograd.Function):
    """Uniform quantisation to ``bits`` per tensor, forward; the straight-through gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:  # type: ignore[override]
        return quantise(x, bits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def quantise(x: torch.Tensor, bits: int) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    levels = 2**bits - 1
    scale = (hi - lo).clamp_min(1e-12) / levels
    return torch.round((x - lo) / scale) * scale + lo


class Quantise(Compressor):
    """Every token of every sample, each value in ``b = round(32 xi)`` bits (both ways)."""

    name = "quantise"

    def __init__(self, xi: float) -> None:
        super().__init__(xi)
        self.bits = max(1, round(32 * xi))

    def __call__(self, acts: torch.Tensor, attn: torch.Tensor, onehot: torch.Tensor) -> Message:
        sent = _Quantise.apply(acts, self.bits)
        extra = 2 * FP32_BYTES + len(acts) * LABEL_BYTES  # min and step, labels
        return Message(sent, onehot, tensor_bytes(sent, self.bits) + extra, self.bits)

    def backward_message(self, grad: torch.Tensor, msg: Message) -> torch.Tensor:
        return quantise(grad, self.bits)


COMPRESSORS = {
    "uncompressed": lambda xi: Compressor(),
    "adc": ADC,
    # ADC variants (see :class:`ADC`): one change each
    "adc-class": lambda xi: ADC(xi, merge="class"),
    "adc-hard": lambda xi: ADC(xi, hard_labels=True),
    "adc-tokens": lambda xi: ADC(xi, share=0.25),
    "adc-class-tokens": lambda xi: ADC(xi, share=0.25, merge="class"),  # the two together
    "top-k": TopK,
    "random-k": lambda xi: TopK(xi, random=True),
    "quantise": Quantise,
}


class Boundary:
    """The device/server boundary: carries the message forward and its gradient back, counting
    bytes both ways, optionally through AWGN at ``snr_db`` in both directions (docs/methods.md#jscc)."""

    def __init__(self, compressor: Compressor, snr_db: float | None = None) -> None:
        self.compressor, self.snr_db = compressor, snr_db
        self.bytes_up = self.bytes_down = 0

    def _channel(self, t: torch.Tensor) -> torch.Tensor:
        if self.snr_db is None:
            return t
        std = channel.noise_std(t.pow(2).mean(), self.snr_db)
        return t + std * torch.randn_like(t)

    def step(
        self,
        model: SplitViT,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step's forward and backward across the boundary; leaves gradients on the
        parameters (the caller steps the optimisers). Returns the loss and the server's logits."""
        acts, attn = model.device(images)
        msg = self.compressor(acts, attn, F.one_hot(labels, num_classes).float())
        received = self._channel(msg.tensor.detach()).requires_grad_()  # the server's copy
        logits = model.server(received)
        loss = torch.sum(-msg.labels * F.log_softmax(logits, dim=-1), dim=-1).mean()
        loss.backward()
        assert received.grad is not None
        grad = self._channel(self.compressor.backward_message(received.grad, msg))
        msg.tensor.backward(grad)  # the device's backward pass, from the gradient it received
        self.bytes_up += msg.bytes_up
        self.bytes_down += msg.bytes_down
        return loss.detach(), logits.detach()
