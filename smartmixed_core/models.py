"""Backbones (MLP, AdAct's ConvNet) and the paper's 18 architectures.

A backbone takes a *slot factory* ``make_slot(layer_index, units) -> nn.Module`` that builds
the activation of each hidden layer, so every method (fixed, selective, mixed, mixtures)
runs on the same backbone.  Outputs are logits: the loss is cross-entropy on logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from smartmixed_core.errors import ConfigError

SlotFactory = Callable[[int, int], nn.Module]

# Paper Table II, written as full layer lists (input, hidden..., output).  A tuple of
# names keeps every architecture exactly once; a test checks there are 18 distinct ones.
_PAPER_LAYERS: tuple[tuple[int, ...], ...] = (
    (784, 512, 10),
    (784, 512, 256, 128, 10),
    (784, 512, 256, 128, 64, 10),
    (784, 512, 256, 256, 128, 10),
    (784, 256, 128, 10),
    (784, 768, 10),
    (784, 768, 512, 10),
    (784, 768, 512, 512, 10),
    (784, 768, 512, 512, 256, 10),
    (784, 768, 512, 512, 256, 256, 10),
    (784, 768, 512, 512, 256, 256, 128, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 32, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 32, 32, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 32, 32, 16, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 32, 32, 16, 16, 10),
)

PAPER_ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "-".join(map(str, layers)): layers[1:-1] for layers in _PAPER_LAYERS
}
"""Paper name ("784-512-256-128-10") -> hidden widths; the representative net is
``"784-768-512-512-256-256-128-10"``."""

REPRESENTATIVE = "784-768-512-512-256-256-128-10"


def canonical_arch(hidden: Sequence[int]) -> str:
    """The canonical architecture string "w1-w2-..." of hidden widths."""
    return "-".join(str(int(w)) for w in hidden)


def parse_arch(spec: str | Sequence[int], field: str = "arch") -> tuple[int, ...]:
    """Hidden widths from ``"64,32"``, ``"64-32"``, ``[64, 32]``, a paper name or ``paper:NAME``.

    Paper names give the hidden widths only: input and output sizes come from the dataset.
    """
    if not isinstance(spec, str):
        widths = tuple(spec)
    else:
        s = spec.strip()
        name = s.removeprefix("paper:")
        if name in PAPER_ARCHITECTURES:
            return PAPER_ARCHITECTURES[name]
        if s.startswith("paper:"):
            raise ConfigError(
                field,
                f"unknown paper architecture {name!r}; allowed: " + ", ".join(PAPER_ARCHITECTURES),
            )
        parts = [p for p in s.replace(",", "-").split("-")] if s else []
        try:
            widths = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(
                field,
                "expected hidden widths like '64,32' or a paper architecture "
                f"such as 'paper:{REPRESENTATIVE}', got {spec!r}",
            ) from None
    if not widths:
        raise ConfigError(field, "needs at least one hidden width")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1 or w > 1_000_000:
            raise ConfigError(field, f"hidden widths must be integers in 1..1000000, got {w!r}")
    return widths


class Backbone(nn.Module):
    """A network whose hidden activations live in ``self.acts`` (one slot per hidden layer)."""

    acts: nn.ModuleList

    def permute_units(self, layer: int, perm: Tensor) -> None:
        """Reorder hidden layer ``layer``'s units by ``perm`` without changing the function:
        rows of the producing weights, columns of the consuming ones."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Re-initialise every weight (phase-2 ``reinit``)."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()


class MLP(Backbone):
    """Fully connected network: ``in -> hidden[0] -> ... -> hidden[-1] -> classes`` (logits)."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], num_classes: int, make_slot: SlotFactory
    ):
        super().__init__()
        widths = [in_features, *hidden]
        self.hidden = tuple(hidden)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.acts = nn.ModuleList(make_slot(i, w) for i, w in enumerate(hidden))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for linear, act in zip(self.linears, self.acts):
            x = act(linear(x))
        return self.head(x)

    @torch.no_grad()
    def permute_units(self, layer: int, perm: Tensor) -> None:
        lin = self.linears[layer]
        lin.weight.copy_(lin.weight[perm])
        lin.bias.copy_(lin.bias[perm])
        nxt = self.linears[layer + 1] if layer + 1 < len(self.linears) else self.head
        nxt.weight.copy_(nxt.weight[:, perm])


class ConvNet(Backbone):
    """AdAct's ConvNet: 4 x (conv3x3 -> BatchNorm -> activation -> 2x2 max-pool), one linear head.

    Pooling uses ``ceil_mode`` so small images (8x8 digits) survive four halvings.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        num_classes: int,
        make_slot: SlotFactory,
        channels: Sequence[int] = (32, 64, 128, 256),
    ):
        super().__init__()
        chans = [in_channels, *channels]
        self.hidden = tuple(channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels)
        self.acts = nn.ModuleList(make_slot(i, c) for i, c in enumerate(channels))
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        h, w = image_size
        for _ in channels:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.spatial = h * w
        self.head = nn.Linear(channels[-1] * self.spatial, num_classes)
        self._init_convs()

    def _init_convs(self) -> None:
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._init_convs()

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm, act in zip(self.convs, self.norms, self.acts):
            x = self.pool(act(norm(conv(x))))
        return self.head(x.flatten(1))

    @torch.no_grad()
    def permute_units(self, layer: int, perm: Tensor) -> None:
        conv, norm = self.convs[layer], self.norms[layer]
        for t in (
            conv.weight,
            conv.bias,
            norm.weight,
            norm.bias,
            norm.running_mean,
            norm.running_var,
        ):
            t.copy_(t[perm])
        if layer + 1 < len(self.convs):
            nxt = self.convs[layer + 1].weight
            nxt.copy_(nxt[:, perm])
        else:  # the head sees channels x spatial positions, flattened channel-major
            w = self.head.weight
            c = len(perm)
            w.copy_(w.view(w.shape[0], c, self.spatial)[:, perm].reshape_as(w))
