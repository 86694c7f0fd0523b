"""Backbones (MLP, AdAct's ConvNet) and the paper's 18 architectures.

A backbone takes a *slot factory* ``make_slot(layer_index, units) -> nn.Module`` that builds
the activation of each hidden layer, so every method (fixed, selective, mixed, mixtures)
runs on the same backbone.  Outputs are logits: the loss is cross-entropy on logits.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smartmixed_core.layers import flat_units, unflat_units
from smartmixed_core.seeded import SeedBatchNorm2d, SeedConv2d, SeedLinear, SeedNoise

SlotFactory = Callable[[int, int], nn.Module]

def _gather(t: Tensor, dim: int, perm: Tensor) -> None:
    """Reorder ``t`` (leading seeds dimension) along ``dim`` by each seed's ``perm[s]``."""
    shape = [1] * t.dim()
    shape[0], shape[dim] = perm.shape
    t.copy_(t.gather(dim, perm.reshape(shape).expand_as(t)))


class Backbone(nn.Module):
    """S networks of one architecture as one module (:mod:`smartmixed_core.seeded`).

    ``forward`` takes ``[S, batch, *features]`` (each seed its own batch) and returns
    ``[S, batch, classes]`` logits; :meth:`shared` takes one batch for every seed.  The hidden
    activations live in ``self.acts`` (one slot per hidden layer).
    """

    acts: nn.ModuleList
    head: SeedLinear

    @property
    def seeds(self) -> int:
        return self.head.weight.shape[0]

    def shared(self, x: Tensor) -> Tensor:
        """Logits ``[S, batch, classes]`` of every seed for the one batch ``x``."""
        return self(x.expand(self.seeds, *x.shape))

    def permute_units(self, layer: int, perm: Tensor) -> None:
        """Reorder hidden layer ``layer``'s units of seed ``s`` by ``perm[s]`` (``[S, units]``)
        without changing the function: rows of the producing weights, columns of the
        consuming ones."""
        raise NotImplementedError

    def reset_parameters(self, generators: Sequence[torch.Generator] | None = None) -> None:
        """Initialise every seed's weights from its own generator (default: seeded 0..S-1)."""
        gens = generators or [torch.Generator().manual_seed(s) for s in range(self.seeds)]
        for s, gen in enumerate(gens):
            for m in self.modules():
                if hasattr(m, "init_seed"):
                    m.init_seed(s, gen)

    def use_noise(self, noise: SeedNoise) -> None:
        """Make every slot draw its noise from ``noise`` (one generator per seed)."""
        for m in self.modules():
            if hasattr(m, "noise"):
                m.noise = noise

    def use_compiled_forms(self, on: bool) -> None:
        """Slots in their ``torch.compile``-friendly forms (no data-dependent shapes)."""
        for m in self.modules():
            if hasattr(m, "compiled"):
                m.compiled = on

    def select_seeds(self, idx: Sequence[int]) -> Backbone:
        """A copy holding only the seeds ``idx`` (in that order)."""
        out = copy.deepcopy(self)
        idx = list(idx)
        with torch.no_grad():
            for m in out.modules():
                for name, p in m._parameters.items():
                    if p is not None:
                        m._parameters[name] = nn.Parameter(p[idx].clone(), p.requires_grad)
                for name, b in m._buffers.items():
                    if b is not None and name not in m._non_persistent_buffers_set:
                        m._buffers[name] = b[idx].clone()
                if hasattr(m, "select_seeds") and m is not out:
                    m.select_seeds(idx)
        return out


class MLP(Backbone):
    """Fully connected network: ``in -> hidden[0] -> ... -> hidden[-1] -> classes`` (logits)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int,
                 make_slot: SlotFactory, seeds: int = 1):
        super().__init__()
        widths = [in_features, *hidden]
        self.hidden = tuple(hidden)
        self.linears = nn.ModuleList(SeedLinear(a, b, seeds) for a, b in zip(widths, widths[1:]))
        self.acts = nn.ModuleList(make_slot(i, w) for i, w in enumerate(hidden))
        self.head = SeedLinear(widths[-1], num_classes, seeds)

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(2)
        for linear, act in zip(self.linears, self.acts):
            h = act(linear(h))
        return self.head(h)

    @torch.no_grad()
    def permute_units(self, layer: int, perm: Tensor) -> None:
        lin = self.linears[layer]
        _gather(lin.weight, 1, perm)
        _gather(lin.bias, 1, perm)
        nxt = self.linears[layer + 1] if layer + 1 < len(self.linears) else self.head
        _gather(nxt.weight, 2, perm)


class ConvNet(Backbone):
    """AdAct's ConvNet: 4 x (conv3x3 -> BatchNorm -> activation -> 2x2 max-pool), one linear head.

    The seeds run folded into the channels (``[batch, S * C, H, W]``, grouped convolutions);
    the slots see ``[S, batch, C, H, W]``.  Pooling uses ``ceil_mode`` so small images (8x8
    digits) survive four halvings.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int,
                 make_slot: SlotFactory, channels: Sequence[int] = (32, 64, 128, 256),
                 seeds: int = 1):
        super().__init__()
        chans = [in_channels, *channels]
        self.hidden = tuple(channels)
        self.convs = nn.ModuleList(SeedConv2d(a, b, seeds) for a, b in zip(chans, chans[1:]))
        self.norms = nn.ModuleList(SeedBatchNorm2d(c, seeds) for c in channels)
        self.acts = nn.ModuleList(make_slot(i, c) for i, c in enumerate(channels))
        h, w = image_size
        for _ in channels:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.spatial = h * w
        self.head = SeedLinear(channels[-1] * self.spatial, num_classes, seeds)

    def forward(self, x: Tensor) -> Tensor:
        seeds = x.shape[0]
        h = flat_units(x)
        for conv, norm, act in zip(self.convs, self.norms, self.acts):
            h = flat_units(act(unflat_units(norm(conv(h)), seeds)))
            h = F.max_pool2d(h, 2, ceil_mode=True)
        return self.head(unflat_units(h, seeds).flatten(2))

    @torch.no_grad()
    def permute_units(self, layer: int, perm: Tensor) -> None:
        conv, norm = self.convs[layer], self.norms[layer]
        for t in (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean,
                  norm.running_var):
            _gather(t, 1, perm)
        if layer + 1 < len(self.convs):
            _gather(self.convs[layer + 1].weight, 2, perm)
        else:  # the head sees channels x spatial positions, flattened channel-major
            w = self.head.weight
            view = w.view(w.shape[0], w.shape[1], len(perm[0]), self.spatial)
            _gather(view, 2, perm)
