"""The one training loop, :func:`fit`, used by every method, both SmartMixed phases and any
number of seeds (the model's seeds dimension, :mod:`smartmixed_core.seeded`).

Data live on the training device as whole tensors; each epoch draws one index permutation
per seed from that seed's own generator, so batch order is seeded per seed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smartmixed_core.data import Splits
from smartmixed_core.seeded import SeedNoise


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run cannot continue."""

    def __init__(self, epoch: int, loss: float, seed: int | None = None) -> None:
        self.epoch, self.seed = epoch, seed
        where = f" (seed {seed})" if seed is not None else ""
        super().__init__(f"non-finite training loss ({loss}) at epoch {epoch}{where}")


@dataclass
class FitConfig:
    """Optimisation settings for one call of :func:`fit`."""

    epochs: int
    """Epochs to train in this call."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay (L2; decoupled with ``optimizer="adamw"``)."""
    optimizer: str = "adam"
    """``adam`` or ``adamw``."""
    batch_size: int = 64
    """Training batch size."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value (the reference code used 1.0)."""
    patience: int | None = None
    """Stop after this many epochs without a better monitored value (None: never)."""
    restore: str = "val_loss"
    """Weights at the end: the epoch with the lowest ``val_loss``, the highest
    ``val_accuracy`` (the first epoch reaching it), or the ``last`` epoch's.  Patience watches
    the same value (``val_loss`` for ``last``)."""
    eval_batch_size: int = 4096
    """Batch size for validation/test passes (memory only; results do not depend on it)."""
    compile: bool = False
    """Train through ``torch.compile`` of the model (slots in their compile forms); evaluation
    stays eager."""


@dataclass
class SeedFit:
    """One seed's part of a :func:`fit` call."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    best_score: float = math.inf
    """The monitored value at ``best_epoch``, as a loss (``-val_accuracy`` for accuracy)."""
    best_state: dict[str, Tensor] | None = None
    """That seed's slice of the model's state at its best epoch (or where it stopped)."""
    since_best: int = 0
    stopped: bool = False
    stopped_early: bool = False
    """Stopped by patience (a callback's stop request sets only ``stopped``)."""


@dataclass
class FitState:
    """Where a :func:`fit` call stands after its latest completed epoch: a resume point.

    Given as ``fit(..., state=s)``, ``s`` is updated in place after every epoch, after the
    epoch-end callbacks and before ``on_round``, which can copy it with :meth:`snapshot`.  A
    ``fit`` given a state whose ``step`` is not -1 continues after that epoch with the same
    numbers as an uninterrupted run (weights and generators are the caller's: restore them
    first).
    """

    step: int = -1
    """Last completed epoch of this fit, counted from 0; -1 before the first."""
    seeds: list[SeedFit] = field(default_factory=list)
    seconds: float = 0.0
    optimizer: dict | None = None

    def snapshot(self) -> dict:
        """A deep copy as plain data (``torch.save``-able; :meth:`restore` reads it)."""
        d = copy.deepcopy(self.__dict__)
        d["seeds"] = [s.__dict__ for s in d["seeds"]]
        return d

    @classmethod
    def restore(cls, d: dict) -> FitState:
        return cls(**{**d, "seeds": [SeedFit(**s) for s in d["seeds"]]})


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    """The epoch whose weights the model holds at the end (the last one for ``last``)."""
    best_val_loss: float = math.inf
    stopped_early: bool = False
    seconds: float = 0.0


def seed_state(model: nn.Module, s: int) -> dict[str, Tensor]:
    """Seed ``s``'s slice of every entry of ``model``'s state (all carry a seeds dimension)."""
    return {k: v[s].detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def load_seed_state(model: nn.Module, s: int, state: dict[str, Tensor]) -> None:
    for k, v in model.state_dict().items():
        v[s].copy_(state[k])


def clip_per_seed(params: Sequence[Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` for every seed on its own (each seed's slice of every gradient).
    Each seed's norm is computed on its own slices, so it does not depend on the others."""
    grads = [p.grad for p in params if p.grad is not None]
    seeds = grads[0].shape[0]
    norms = torch.stack([torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(g[s]) for g in grads])) for s in range(seeds)])
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


def seed_losses(logits: Tensor, target: Tensor) -> Tensor:
    """``[S]``: each seed's mean cross-entropy of ``logits`` ``[S, batch, classes]``."""
    return torch.stack([F.cross_entropy(lg, t) for lg, t in zip(logits, target)])


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 4096,
            per_seed: bool = False) -> Tensor:
    """Eval-mode logits ``[S, n, classes]`` of every seed (mode restored afterwards): of the
    shared examples ``x`` ``[n, ...]``, or with ``per_seed`` of each seed's own ``x[s]``."""
    was_training = model.training
    model.eval()
    forward, dim = (model, 1) if per_seed else (model.shared, 0)
    out = torch.cat([forward(chunk) for chunk in x.split(batch_size, dim)], dim=1)
    model.train(was_training)
    return out


def predict_split(model: nn.Module, data: Splits, split: str,
                  batch_size: int = 4096) -> Tensor:
    """:func:`predict` on ``data``'s ``split`` (``val``, ``test``)."""
    return predict(model, getattr(data, f"x_{split}"), batch_size, data.per_seed)


class _SeedwiseFused:
    """Adam/AdamW with torch's fused kernel, each seed's slice of a parameter updated as a
    tensor of its own.  The fused CPU kernel runs a vector loop and a scalar tail that round
    differently, so over a whole ``[S, ...]`` parameter a seed's last elements would get
    other bits than alone; slice by slice every seed gets exactly its one-seed update."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        assert closure is None
        for group in self.param_groups:  # type: ignore[attr-defined]
            params: list[Tensor] = []
            grads: list[Tensor] = []
            avgs: list[Tensor] = []
            sqs: list[Tensor] = []
            steps: list[Tensor] = []
            self._init_group(group, params, grads, avgs, sqs, [], steps)  # type: ignore[attr-defined]
            torch._foreach_add_(steps, 1)
            split = [[t[s] for t in ts for s in range(t.shape[0])]
                     for ts in (params, grads, avgs, sqs)]
            seed_steps = [st for p, st in zip(params, steps) for _ in range(p.shape[0])]
            kernel = (torch._fused_adamw_ if group.get("decoupled_weight_decay")
                      else torch._fused_adam_)
            kernel(*split, [], seed_steps, amsgrad=False, lr=group["lr"],
                   beta1=group["betas"][0], beta2=group["betas"][1],
                   weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                   grad_scale=None, found_inf=None)


class SeedAdam(_SeedwiseFused, torch.optim.Adam):
    pass


class SeedAdamW(_SeedwiseFused, torch.optim.AdamW):
    pass


def make_optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    """``cfg``'s optimizer (Adam or AdamW) over ``model``'s parameters.

    torch's fused implementation (one kernel for all parameters) where it has one for the
    parameters' device, seed by seed (:class:`SeedAdam`): on a 2-core CPU its step over the
    paper net takes 1.4 ms against 5.2 ms for the per-parameter loop.  Elsewhere the plain
    implementation.
    """
    fused = {"adam": SeedAdam, "adamw": SeedAdamW}[cfg.optimizer]
    params = list(model.parameters())
    try:
        return fused(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except RuntimeError:  # no fused kernel for this device
        plain = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
        return plain(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def aux_loss(modules: Sequence[nn.Module]) -> Tensor | None:
    """Sum of the modules' ``aux_loss()`` terms (e.g. gate entropy), or None."""
    terms = [t for m in modules if (t := m.aux_loss()) is not None]
    return torch.stack(terms).sum() if terms else None


def seed_callbacks(callbacks: Sequence[Sequence[object]], seeds: int) -> list[list[object]]:
    """One list of callbacks per seed: ``callbacks`` (one sequence per seed, the first ones
    given) padded with empty lists."""
    return [list(c) for c in callbacks] + [[] for _ in range(seeds - len(callbacks))]


def fit(
    model: nn.Module,
    data: Splits,
    cfg: FitConfig,
    *,
    generators: Sequence[torch.Generator],
    noise: SeedNoise | None = None,
    callbacks: Sequence[Sequence[object]] = (),
    start_epochs: Sequence[int] | None = None,
    seed_ids: Sequence[int] | None = None,
    state: FitState | None = None,
    on_round: Callable[[], object] | None = None,
) -> list[FitResult]:
    """Train every seed of ``model`` on ``data`` (on the model's device) for ``cfg.epochs``.

    Seed ``s`` draws its batch order from ``generators[s]`` and its noise from ``noise``;
    its loss, gradient, clipping and early stopping are its own, so its numbers do not depend
    on the other seeds.  ``callbacks[s]`` are seed ``s``'s hooks: objects with an optional
    ``on_epoch_start(epoch, model)`` and an optional ``on_epoch_end(epoch, record, model)``.
    A seed that stops (patience, or an ``on_epoch_end`` returning True) stops recording and
    drawing from its generators; the others go on.  Epochs of seed ``s`` are numbered from
    ``start_epochs[s]`` (phase 2 continues phase 1's numbering).  Each history record holds
    ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``seconds`` and whatever
    ``callbacks[s]`` add.  Raises :class:`NonFiniteLossError` on a NaN/inf loss.  ``state`` is
    kept current after every epoch, then ``on_round()`` runs; a state with a completed epoch
    is resumed from (see :class:`FitState`).  Returns one :class:`FitResult` per seed.
    """
    seeds = len(generators)
    ids = list(seed_ids) if seed_ids is not None else [None] * seeds
    starts = list(start_epochs) if start_epochs is not None else [0] * seeds
    cbs = seed_callbacks(callbacks, seeds)
    opt = make_optimizer(model, cfg)
    aux_modules = [m for m in model.modules() if hasattr(m, "aux_loss")]
    forward = model
    if cfg.compile:
        model.use_compiled_forms(True)  # type: ignore[operator]
        # A worker trains many configurations in one process: each architecture (and each
        # train/eval mode) is an entry in dynamo's cache for the same code; torch's default
        # of 8 would silently fall back to eager after a few.
        cache = torch._dynamo.config
        cache.recompile_limit = max(cache.recompile_limit, 256)
        cache.accumulated_recompile_limit = max(cache.accumulated_recompile_limit, 4096)
        forward = torch.compile(model)
    st = state if state is not None else FitState()
    n, device = data.n_train, data.x_train.device
    if st.step >= 0:  # continue after a completed epoch (its time included)
        opt.load_state_dict(st.optimizer)
    else:
        st.seeds = [SeedFit() for _ in range(seeds)]
    t0 = time.perf_counter() - st.seconds
    for step in range(st.step + 1, cfg.epochs):
        active = [not r.stopped for r in st.seeds]
        if not any(active):
            break
        if noise is not None:
            noise.active = active
        for s in range(seeds):
            for cb in cbs[s] if active[s] else ():
                if hasattr(cb, "on_epoch_start"):
                    cb.on_epoch_start(starts[s] + step, model)
        model.train()
        order = torch.stack([torch.randperm(n, generator=g) if a else torch.arange(n)
                             for g, a in zip(generators, active)]).to(device)
        weight = torch.tensor(active, dtype=data.x_train.dtype, device=device)
        total = torch.zeros(seeds, device=device)
        for i in range(0, n, cfg.batch_size):
            idx = order[:, i : i + cfg.batch_size]
            x, y = data.train_batch(idx)
            losses = seed_losses(forward(x), y)
            total += losses.detach() * idx.shape[1]
            loss = (losses * weight).sum()
            extra = aux_loss(aux_modules)
            if extra is not None:
                loss = loss + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                clip_per_seed(list(model.parameters()), cfg.grad_clip)
            opt.step()
        train_loss = (total / n).tolist()
        logits = predict_split(model, data, "val", cfg.eval_batch_size)
        seconds = time.perf_counter() - t0
        for s, run in enumerate(st.seeds):
            if not active[s]:
                continue
            epoch = starts[s] + step
            if not math.isfinite(train_loss[s]):
                raise NonFiniteLossError(epoch, train_loss[s], ids[s])
            y_val = data.labels("val", s)
            val_loss = float(F.cross_entropy(logits[s], y_val))
            record = {
                "epoch": epoch,
                "train_loss": train_loss[s],
                "val_loss": val_loss,
                "val_accuracy": float((logits[s].argmax(1) == y_val).float().mean()),
                "seconds": seconds,
            }
            score = -record["val_accuracy"] if cfg.restore == "val_accuracy" else val_loss
            if score < run.best_score:
                run.best_score, run.best_val_loss, run.best_epoch = score, val_loss, epoch
                run.since_best = 0
                if cfg.restore != "last":
                    run.best_state = seed_state(model, s)
            else:
                run.since_best += 1
            stop = False
            for cb in cbs[s]:
                if hasattr(cb, "on_epoch_end"):
                    stop = bool(cb.on_epoch_end(epoch, record, model)) or stop
            run.history.append(record)
            run.stopped_early = cfg.patience is not None and run.since_best >= cfg.patience
            if stop or run.stopped_early:
                run.stopped = True
                if cfg.restore == "last":
                    run.best_state = seed_state(model, s)
        st.step, st.seconds, st.optimizer = step, seconds, opt.state_dict()
        if on_round is not None:
            on_round()
    for s, run in enumerate(st.seeds):
        if run.best_state is not None:
            load_seed_state(model, s, run.best_state)
    if noise is not None:
        noise.active = None
    seconds = time.perf_counter() - t0
    if cfg.restore == "last":
        for r in st.seeds:
            if r.history:
                r.best_epoch, r.best_val_loss = r.history[-1]["epoch"], r.history[-1]["val_loss"]
    return [FitResult(r.history, r.best_epoch, r.best_val_loss, r.stopped_early, seconds)
            for r in st.seeds]
