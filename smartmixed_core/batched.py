"""K seeds of one configuration trained as one batched model.

Every seed keeps what makes it that seed: its initial weights (built exactly as
:func:`~smartmixed_core.runner.train_seed` builds them), its own batch order (its own
generator) and its own Gumbel noise (a generator started from the global RNG state that
``train_seed`` would have at the same point).  The weights are stacked along a leading seed
dimension and each layer runs as one batched matmul, so K small networks cost a few kernels
instead of K times as many, which is what pays on a GPU.  The loss is the sum of the
per-seed mean losses, so each seed's gradient is its own; Adam is elementwise and gradient
clipping is done per seed.  Per-seed results equal one-by-one training up to float rounding
(the batched matmul sums in another order) and do not depend on which other seeds share
the batch.  On a CPU the activation slots lay the seeds' units end to end and run the
single model's fused layers on them (each unit's activation computed once); on a GPU they
evaluate every pool member and select, a fixed number of kernels whatever K.

Supported: MLP backbones with fixed activations or SmartMixed/selective slots over pure
activations (no PReLU/RReLU).  :func:`batchable` says whether a configuration qualifies.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smartmixed_core.activations import ACTIVATIONS, fused_forms, is_pure
from smartmixed_core.config import RunConfig
from smartmixed_core.data import Splits
from smartmixed_core.freeze import freeze
from smartmixed_core.layers import (
    MixedActivation,
    SelectiveActivation,
    activate_groups,
    gumbel_noise,
    hard_gumbel_softmax,
    noise_shape,
    selection_forms,
    straight_through,
)
from smartmixed_core.models import MLP
from smartmixed_core.training import FitConfig, NonFiniteLossError, make_optimizer


def batchable(cfg: RunConfig) -> str | None:
    """``None`` when ``cfg`` can train its seeds batched, else the reason it cannot."""
    kind = cfg.parsed_method.kind
    if cfg.model != "mlp":
        return "only MLP backbones are batched"
    if kind == "fixed":
        acts = cfg.parsed_method.activations
    elif kind in ("smartmixed", "selective"):
        acts = cfg.pool_names
    else:
        return f"method {kind} is not batched"
    if not is_pure(acts):
        return "activations with parameters or noise (prelu, rrelu) are not batched"
    return None


class _Fixed(nn.Module):
    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _select(x: Tensor, choice: Tensor, fns: Sequence[Any]) -> Tensor:
    """``fns[choice[k, n]]`` applied to unit ``n`` of seed ``k``; ``x`` is ``[K, B, N]``."""
    out = fns[0](x)
    for j in range(1, len(fns)):
        out = torch.where((choice == j).unsqueeze(1), fns[j](x), out)
    return out


def _end_to_end(x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``fn`` on the K seeds' units laid end to end: ``x`` ``[K, batch, N]`` is passed as
    ``[K * N, batch]`` (seed ``k``'s units are rows ``k * N`` to ``(k + 1) * N``) and the
    result comes back as ``[K, batch, N]``."""
    k, batch, units = x.shape
    out = fn(x.transpose(1, 2).reshape(k * units, batch))
    return out.view(k, units, batch).transpose(1, 2)


class _Selective(nn.Module):
    """Phase-1 slot of K seeds: logits ``[K, N, P]``, noise from each seed's generator.

    On a CPU the seeds' units are laid end to end (``[K * N, batch]``) and go through the
    single model's fused straight-through selection; on a GPU every pool member is evaluated
    on every unit and selected (a fixed number of kernels, no sort)."""

    def __init__(self, slots: Sequence[SelectiveActivation], noise: Sequence[torch.Generator]):
        super().__init__()
        self.pool = slots[0].pool
        self._forms, matrix = selection_forms(self.pool)
        self.fns = self._forms.fns
        self.tau = slots[0].tau
        self.logits = nn.Parameter(torch.stack([s.logits.detach() for s in slots]).clone())
        self.noise = noise
        self.register_buffer("_basis_matrix", matrix, persistent=False)

    def choices(self) -> Tensor:
        return self.logits.detach().argmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return _select(x, self.choices(), self.fns)
        shape = noise_shape(self.logits[0])
        # Each seed's generator makes the draws train_seed makes from the global CPU one.
        g = torch.stack([gumbel_noise(shape, "cpu", torch.float32, gen) for gen in self.noise])
        y, choice = hard_gumbel_softmax(self.logits, self.tau, g.to(self.logits))
        if x.device.type == "cpu":
            return _end_to_end(x, lambda rows: straight_through(
                rows, y.flatten(0, 1), choice.flatten(), self._forms, self._basis_matrix, 0))
        h = F.one_hot(choice, len(self.pool)).to(y.dtype) + (y - y.detach())  # [K, N, P]
        out = torch.zeros_like(x)
        for j, fn in enumerate(self.fns):
            out = out + h[:, :, j].unsqueeze(1) * fn(x)
        return out


class _Mixed(nn.Module):
    """Phase-2 slot of K seeds: each seed's fixed per-unit choices ``[K, N]``.

    :func:`~smartmixed_core.freeze.freeze` sorted every seed's units into contiguous groups,
    so on a CPU the slot lays the seeds' units end to end (``[K * N, batch]``) and activates
    each group once, in place (:func:`~smartmixed_core.layers.activate_groups`), instead of
    every pool member on every unit followed by a selection.  On a GPU the selection stays:
    it launches a fixed number of kernels whatever the number of seeds and groups.
    """

    def __init__(self, slots: Sequence[MixedActivation]):
        super().__init__()
        self.pool = slots[0].pool
        self.fns = tuple(ACTIVATIONS[n].fn for n in self.pool)
        self.register_buffer("choice", torch.stack([s.choices() for s in slots]))
        inplace, grads = fused_forms(self.pool)
        self._groups = None if inplace is None or grads is None else (
            [c for s in slots for c in s.counts], inplace * len(slots), grads * len(slots), 0)

    def choices(self) -> Tensor:
        return self.choice

    def forward(self, x: Tensor) -> Tensor:
        if self._groups is None or x.device.type != "cpu":
            return _select(x, self.choice, self.fns)
        return _end_to_end(x, lambda rows: activate_groups(rows, *self._groups))


class BatchedMLP(nn.Module):
    """K :class:`~smartmixed_core.models.MLP` of one architecture as one module.

    :meth:`forward` takes ``[K, B, *features]`` (each seed its own batch),
    :meth:`forward_shared` ``[B, *features]`` (one batch for all seeds); both return
    ``[K, B, classes]``.  :meth:`write_back` copies seed
    ``k``'s weights into an unbatched MLP.
    """

    def __init__(self, models: Sequence[MLP], noise: Sequence[torch.Generator] = ()):
        super().__init__()
        if not models:
            raise ValueError("BatchedMLP needs at least one model")
        self.k = len(models)
        linears = [[*m.linears, m.head] for m in models]
        self.weights = nn.ParameterList(
            torch.stack([ls[i].weight.detach() for ls in linears]).clone()
            for i in range(len(linears[0]))
        )
        self.biases = nn.ParameterList(
            torch.stack([ls[i].bias.detach() for ls in linears]).clone()
            for i in range(len(linears[0]))
        )
        self.acts = nn.ModuleList()
        for layer, first in enumerate(models[0].acts):
            slots = [m.acts[layer] for m in models]
            if isinstance(first, SelectiveActivation):
                self.acts.append(_Selective(slots, noise))
            elif isinstance(first, MixedActivation):
                self.acts.append(_Mixed(slots))
            else:
                self.acts.append(_Fixed(first))

    def forward_shared(self, x: Tensor) -> Tensor:
        return self(x.unsqueeze(0).expand(self.k, *x.shape))

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(x.shape[0], x.shape[1], -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < len(self.acts):
                h = self.acts[i](h)
        return h

    @torch.no_grad()
    def write_back(self, k: int, model: MLP) -> None:
        for w, b, lin in zip(self.weights, self.biases, [*model.linears, model.head]):
            lin.weight.copy_(w[k])
            lin.bias.copy_(b[k])
        for slot, mine in zip(model.acts, self.acts):
            if isinstance(mine, _Selective):
                slot.logits.copy_(mine.logits[k])

    def seed_state(self, k: int) -> list[Tensor]:
        return [p[k].detach().clone() for p in self.parameters()]

    @torch.no_grad()
    def load_seed_state(self, k: int, state: Sequence[Tensor]) -> None:
        for p, v in zip(self.parameters(), state):
            p[k].copy_(v)


@dataclass
class _SeedRun:
    """One seed's bookkeeping inside a batched fit."""

    seed: int
    batches: torch.Generator
    noise: torch.Generator
    first_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    best_state: list[Tensor] | None = None
    since_best: int = 0
    stopped: bool = False
    rng_at_stop: tuple[Tensor, Tensor] | None = None

    def snapshot(self) -> dict[str, Any]:
        d = copy.deepcopy({k: v for k, v in self.__dict__.items()
                           if k not in ("batches", "noise")})
        return {**d, "batches": self.batches.get_state(), "noise": self.noise.get_state()}

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> _SeedRun:
        batches, noise = torch.Generator(), torch.Generator()
        batches.set_state(snap["batches"])
        noise.set_state(snap["noise"])
        return cls(**{**snap, "batches": batches, "noise": noise})

    def new_phase(self) -> None:
        """Start the next fit after the epochs recorded so far."""
        self.first_epoch, self.history = self.first_epoch + len(self.history), []
        self.best_epoch, self.best_val_loss, self.best_state = -1, math.inf, None
        self.since_best, self.stopped, self.rng_at_stop = 0, False, None


@dataclass
class BatchedState:
    """Where :func:`train_seeds_batched` stands: a mid-run checkpoint of all its seeds at once.

    Given as ``train_seeds_batched(..., state=s)``, ``s`` is kept current after every batched
    epoch (a *round*), before ``on_round`` runs, so ``on_round`` can copy it with
    :meth:`snapshot`.  ``train_seeds_batched`` given ``BatchedState.restore(d)`` continues
    after that round with the same numbers as an uninterrupted run, bit for bit on the same
    device, for the same seeds in the same order.
    """

    phase: int = 0
    """The fit in progress: 1 = phase 1 (or the only one), 2 = SmartMixed phase 2; 0 = none."""
    step: int = -1
    """Last completed epoch of the fit in progress, counted from 0; -1 before the first."""
    round: int = -1
    """Batched epochs completed over all phases, minus one; -1 before the first."""
    outs: list[dict[str, Any]] = field(default_factory=list)
    """Per seed: summary fields of the finished phases."""
    histories: list[list[dict]] = field(default_factory=list)
    """Per seed: history of the finished phases."""
    seconds: float = 0.0
    """Training time before the latest restore (the run's own time is added on top)."""
    fit_seconds: float = 0.0
    """Time spent in the fit in progress before the latest restore."""
    restored: dict[str, Any] | None = None
    """Weights, optimizer and per-seed state of a snapshot, consumed by the resumed fit."""
    model: BatchedMLP | None = None
    models: list[MLP] = field(default_factory=list)
    runs: list[_SeedRun] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    _t0: float = field(default_factory=time.perf_counter)
    _fit_t0: float = 0.0

    def elapsed(self) -> float:
        """Training time so far, over every restore."""
        return self.seconds + time.perf_counter() - self._t0

    def snapshot(self) -> dict[str, Any]:
        """A resumable deep copy as plain data (``torch.save``-able)."""
        from smartmixed_core.runner import slot_layout

        assert self.model is not None and self.optimizer is not None
        return {
            "phase": self.phase, "step": self.step, "round": self.round,
            "outs": copy.deepcopy(self.outs), "histories": copy.deepcopy(self.histories),
            "seconds": self.elapsed(), "fit_seconds": time.perf_counter() - self._fit_t0,
            "slots": [slot_layout(m) for m in self.models],
            "model_state": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "runs": [r.snapshot() for r in self.runs],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> BatchedState:
        keys = ("phase", "step", "round", "outs", "histories", "seconds", "fit_seconds")
        return cls(**{k: snap[k] for k in keys},
                   restored={k: snap[k] for k in ("slots", "model_state", "optimizer", "runs")})


def _clip_per_seed(params: Sequence[Tensor], max_norm: float) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


def _selection(model: BatchedMLP, k: int) -> tuple[dict[str, dict[str, int]], list[Tensor]]:
    counts, choices = {}, []
    for i, slot in enumerate(model.acts):
        if isinstance(slot, (_Selective, _Mixed)):
            c = slot.choices()[k].clone()
            choices.append(c)
            n = torch.bincount(c.cpu(), minlength=len(slot.pool)).tolist()
            counts[f"layer_{i + 1}"] = dict(zip(slot.pool, n))
    return counts, choices


def fit_batched(
    model: BatchedMLP,
    data: Splits,
    cfg: FitConfig,
    runs: Sequence[_SeedRun],
    *,
    tau: Any = None,
    phase: int | None = None,
    callbacks: Sequence[Sequence[object]] = (),
    state: BatchedState | None = None,
    on_round: Callable[[int], object] | None = None,
) -> None:
    """:func:`~smartmixed_core.training.fit` for K seeds at once, record for record.

    ``runs[k]`` collects seed ``k``'s history, best epoch and best weights; a seed whose
    patience runs out stops recording (its generators are set back to where it stopped, so
    what follows is what it would do alone) while the others go on.  ``tau(epoch)`` sets the
    phase-1 temperature; ``phase`` tags records (phase 1 also gets selection counts).
    ``state`` is kept current after every epoch, then ``on_round(state.round)`` runs; a
    state holding a restored snapshot continues after its ``step`` (weights are the
    caller's: load them into ``model`` first).
    """
    opt = make_optimizer(model, cfg)
    n, device, k = len(data.x_train), data.x_train.device, model.k
    first, t0 = 0, time.perf_counter()
    if state is not None:
        if state.restored is not None and state.step >= 0:
            opt.load_state_dict(state.restored["optimizer"])
            first, t0 = state.step + 1, t0 - state.fit_seconds
        state.model, state.optimizer, state.runs, state.restored = model, opt, list(runs), None
        state._fit_t0 = t0
    previous = [_selection(model, i)[1] for i in range(k)]
    for step in range(first, cfg.epochs):
        if all(r.stopped for r in runs):
            break
        if tau is not None:
            for slot in model.acts:
                slot.tau = tau(runs[0].first_epoch + step)
        model.train()
        order = torch.stack([torch.randperm(n, generator=r.batches) for r in runs]).to(device)
        total = torch.zeros(k, device=device)
        for i in range(0, n, cfg.batch_size):
            idx = order[:, i : i + cfg.batch_size]
            logits = model(data.x_train[idx])
            target = data.y_train[idx]
            losses = F.cross_entropy(
                logits.flatten(0, 1), target.flatten(), reduction="none"
            ).view(k, -1).mean(1)
            total += losses.detach() * idx.shape[1]
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            if cfg.grad_clip:
                _clip_per_seed(list(model.parameters()), cfg.grad_clip)
            opt.step()
        train_loss = (total / n).tolist()
        model.eval()
        with torch.no_grad():
            val = torch.cat(
                [model.forward_shared(data.x_val[j : j + cfg.eval_batch_size])
                 for j in range(0, len(data.x_val), cfg.eval_batch_size)], dim=1
            )
        seconds = time.perf_counter() - t0
        for s, run in enumerate(runs):
            if run.stopped:
                continue
            if not math.isfinite(train_loss[s]):
                raise NonFiniteLossError(run.first_epoch + step, train_loss[s], run.seed)
            val_loss = float(F.cross_entropy(val[s], data.y_val))
            epoch = run.first_epoch + step
            record: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": train_loss[s],
                "val_loss": val_loss,
                "val_accuracy": float((val[s].argmax(1) == data.y_val).float().mean()),
                "seconds": seconds,
            }
            if val_loss < run.best_val_loss:
                run.best_val_loss, run.best_epoch, run.since_best = val_loss, epoch, 0
                if cfg.restore_best:
                    run.best_state = model.seed_state(s)
            else:
                run.since_best += 1
            if phase == 1:
                counts, now = _selection(model, s)
                record["phase"] = 1
                record["tau"] = model.acts[0].tau
                record["selection"] = counts
                record["changed"] = {
                    f"layer_{i + 1}": int((a != b).sum())
                    for i, (a, b) in enumerate(zip(now, previous[s]))
                }
                previous[s] = now
            elif phase is not None:
                record["phase"] = phase
            for cb in callbacks[s] if callbacks else ():
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(epoch, record, None)
            run.history.append(record)
            if cfg.patience is not None and run.since_best >= cfg.patience:
                run.stopped = True
                if not cfg.restore_best:
                    run.best_state = model.seed_state(s)
                run.rng_at_stop = (run.batches.get_state(), run.noise.get_state())
        if state is not None:
            state.step, state.round = step, state.round + 1
            if on_round is not None:
                on_round(state.round)
    for s, run in enumerate(runs):
        if run.best_state is not None:
            model.load_seed_state(s, run.best_state)
        if run.rng_at_stop is not None:
            run.batches.set_state(run.rng_at_stop[0])
            run.noise.set_state(run.rng_at_stop[1])


def train_seeds_batched(
    cfg: RunConfig,
    seeds: Sequence[int],
    data: Splits,
    callbacks: Sequence[Sequence[object]] = (),
    state: BatchedState | None = None,
    on_round: Callable[[int], object] | None = None,
) -> list[tuple[MLP, dict[str, Any], list[dict]]]:
    """Train ``cfg`` for all ``seeds`` as one batched model (see :func:`batchable`).

    Returns, per seed, the trained unbatched model, the summary fields of the phases
    (``phase1``, ``selection``, ``phase2_start_test_accuracy``, ``best_epoch``) and the
    history: what :func:`~smartmixed_core.runner.train_seed` computes before its final
    evaluation.  Callbacks get ``model=None``.  ``state`` (optional) is kept current after
    every batched epoch and then ``on_round(round)`` is called; a restored state continues
    after its round (see :class:`BatchedState`).
    """
    from smartmixed_core.freeze import selection_counts
    from smartmixed_core.runner import (
        build_model,
        evaluate,
        fit_config,
        model_from_slots,
        temperature_at,
    )

    if (reason := batchable(cfg)) is not None:
        raise ValueError(reason)
    device = data.x_train.device
    state = state if state is not None else BatchedState()
    kind = cfg.parsed_method.kind
    selective = kind in ("smartmixed", "selective")
    if state.restored is not None:  # a snapshot: its models, generators and finished phases
        if len(state.restored["runs"]) != len(seeds) or any(
            r["seed"] != s for r, s in zip(state.restored["runs"], seeds)
        ):
            raise ValueError("the batched state was saved for other seeds")
        models = [model_from_slots(cfg, data.input_shape, data.num_classes, slots).to(device)
                  for slots in state.restored["slots"]]
        runs = [_SeedRun.restore(r) for r in state.restored["runs"]]
        weights = state.restored["model_state"]
    else:
        models, runs, weights = [], [], None
        for seed in seeds:
            torch.manual_seed(seed)  # the same construction as train_seed
            batches = torch.Generator().manual_seed(seed)
            models.append(build_model(cfg, data.input_shape, data.num_classes).to(device))
            noise = torch.Generator()
            noise.set_state(torch.get_rng_state())
            runs.append(_SeedRun(seed, batches, noise))
        state.phase, state.outs, state.histories = 1, [{} for _ in seeds], [[] for _ in seeds]
    state.models = models
    fit_cfg = fit_config(cfg)
    if state.phase == 1:
        model = BatchedMLP(models, [r.noise for r in runs])
        if weights is not None:
            model.load_state_dict(weights)
        first = replace(fit_cfg, epochs=cfg.phase1_epochs) if selective else fit_cfg
        fit_batched(model, data, first, runs, phase=1 if selective else None,
                    callbacks=callbacks, state=state, on_round=on_round,
                    tau=(lambda e: temperature_at(cfg, e)) if selective else None)
        outs, histories = state.outs, state.histories
        for s, m in enumerate(models):
            model.write_back(s, m)
            outs[s]["best_epoch"] = runs[s].best_epoch
            histories[s] += runs[s].history
            if selective:
                outs[s]["selection"] = selection_counts(m)
        if kind == "smartmixed":
            for s, (m, run) in enumerate(zip(models, runs)):
                outs[s]["phase1"] = {
                    "val_accuracy": evaluate(m, data, "val")["accuracy"],
                    "test_accuracy": evaluate(m, data, "test")["accuracy"],
                    "epochs": len(run.history),
                    "best_epoch": run.best_epoch,
                }
                rng = torch.get_rng_state()
                torch.set_rng_state(run.noise.get_state())  # reinit draws as train_seed would
                models[s] = freeze(m, cfg.phase2_init)  # type: ignore[arg-type]
                run.noise.set_state(torch.get_rng_state())
                torch.set_rng_state(rng)
                outs[s]["phase2_start_test_accuracy"] = evaluate(
                    models[s], data, "test")["accuracy"]
                run.new_phase()
            state.phase, state.step, weights = 2, -1, None
    if state.phase == 2:
        model = BatchedMLP(models)
        if weights is not None:
            model.load_state_dict(weights)
        second = replace(fit_cfg, epochs=cfg.epochs - cfg.transition_epoch)
        fit_batched(model, data, second, runs, phase=2, callbacks=callbacks, state=state,
                    on_round=on_round)
        for s, m in enumerate(models):
            model.write_back(s, m)
            state.outs[s]["best_epoch"] = runs[s].best_epoch
            state.histories[s] += runs[s].history
    return [(m, o, h) for m, o, h in zip(models, state.outs, state.histories)]
