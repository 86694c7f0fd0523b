"""Speed ratios of the core, measured side by side in one process (medians, interleaved).

    python -m benchmarks                     # CPU, batch 128 and 1024, paper net
    python -m benchmarks --quick             # tiny smoke version
    python -m benchmarks --json out.json

"uniform mix" = plain MLPs of the same widths, one per pool activation, timed and averaged with
the weights of the mixed net's activation mix: what the activations cost anyway.  Every
train step uses the training loop's optimizer (:func:`make_optimizer`: fused Adam).
"one-group mix" = the same uniform nets built from mixed layers with a single group (the mixed
layer's own code), so ``phase2_*_vs_one_group_mix`` is what grouping itself costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.baselines import GatherScatterMixed, StackAllK, mnist_like_loader
from smartmixed_core.layers import Activation, MixedActivation, SelectiveActivation
from smartmixed_core.models import MLP
from smartmixed_core.names import PAPER_ARCHITECTURES, POOLS, REPRESENTATIVE
from smartmixed_core.phase2 import freeze
from smartmixed_core.training import FitConfig, make_optimizer, seed_losses

POOL = POOLS["paper"]
# A mix like the paper's Fig. 3 (sigmoid rare): fraction of units per pool activation.
MIX = {"relu": 0.25, "sigmoid": 0.02, "tanh": 0.08, "leaky_relu": 0.25, "elu": 0.2, "selu": 0.2}


def timer(fn: Callable[[], object], sync: Callable[[], None]) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    return once


MIN_SAMPLE_S = 0.02
"""Each sample times enough back-to-back calls of a case to last about this long."""


def measure(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each case, interleaving cases so machine noise hits all
    alike; a sample of a short case averages several calls (:data:`MIN_SAMPLE_S`)."""
    calls = {}
    for k, once in cases.items():
        once()  # warm-up
        calls[k] = max(1, round(MIN_SAMPLE_S / max(once(), 1e-6)))
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for k, once in cases.items():
            samples[k].append(sum(once() for _ in range(calls[k])) / calls[k])
    return {k: statistics.median(v) for k, v in samples.items()}


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The training loop's optimizer (Adam, fused where torch has it), lr 1e-4."""
    return make_optimizer(model, FitConfig(epochs=1, lr=1e-4))


def selective_net(hidden, in_f, classes, device, layer=SelectiveActivation, seeds=1):
    if layer is SelectiveActivation:
        net = MLP(in_f, hidden, classes, lambda i, n: layer(n, POOL, seeds=seeds), seeds)
    else:
        net = MLP(in_f, hidden, classes, lambda i, n: layer(n, POOL), seeds)
    net.to(device)
    gen = torch.Generator().manual_seed(1)
    probs = torch.tensor([MIX[a] for a in POOL])
    for slot in net.acts:  # logits whose argmax follows MIX
        s, n = slot.logits.shape[:2]
        choice = torch.multinomial(probs, s * n, True, generator=gen).view(s, n)
        slot.logits.data = nn.functional.one_hot(choice, len(POOL)).float().to(device) * 3
    return net


def run(device: str, batch: int, hidden, repeats: int) -> dict[str, float]:
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    in_f, classes = 784, 10
    x = torch.randn(1, batch, in_f, device=dev)  # one seed
    y = torch.randint(0, classes, (1, batch), device=dev)
    sel = selective_net(hidden, in_f, classes, dev)
    stacked = selective_net(hidden, in_f, classes, dev, StackAllK)
    mixed = freeze(sel.eval()).to(dev)
    gather = freeze(sel.eval()).to(dev)
    for i, slot in enumerate(sel.acts):  # the reference layout: unsorted, gather/scatter
        gather.acts[i] = GatherScatterMixed(POOL, slot.choices())
    uniform = {
        a: MLP(in_f, hidden, classes, lambda i, n, a=a: Activation(a)).to(dev) for a in POOL
    }
    # The same uniform nets as mixed nets with a single group: the mixed layer's own layout
    # and activation code, so the mixed net over these measures what grouping costs.
    one_group = {
        a: MLP(in_f, hidden, classes, lambda i, n, a=a: MixedActivation(
            POOL, [n if p == a else 0 for p in POOL])).to(dev)
        for a in POOL
    }

    def step(model: nn.Module) -> Callable[[], None]:
        opt = optimizer(model)

        def go() -> None:
            model.train()
            loss = seed_losses(model(x), y).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return go

    def infer(model: nn.Module) -> Callable[[], None]:
        model.eval()

        def go() -> None:
            with torch.no_grad():
                model(x)

        return go

    cases = {f"infer/uniform/{a}": timer(infer(m), sync) for a, m in uniform.items()}
    cases |= {f"train/uniform/{a}": timer(step(m), sync) for a, m in uniform.items()}
    cases |= {f"infer/one_group/{a}": timer(infer(m), sync) for a, m in one_group.items()}
    cases |= {f"train/one_group/{a}": timer(step(m), sync) for a, m in one_group.items()}
    cases |= {
        "infer/mixed": timer(infer(mixed), sync),
        "infer/gather_scatter": timer(infer(gather), sync),
        "train/mixed": timer(step(mixed), sync),
        "train/gather_scatter": timer(step(gather), sync),
        "train/selective": timer(step(sel), sync),
        "train/stack_all_k": timer(step(stacked), sync),
    }
    batched = selective_net(hidden, in_f, classes, dev, seeds=SEEDS)
    xs, ys = x.expand(SEEDS, *x.shape[1:]), y.expand(SEEDS, *y.shape[1:])
    opt_k = optimizer(batched)

    def step_batched() -> None:
        batched.train()
        loss = seed_losses(batched(xs), ys).sum()
        opt_k.zero_grad(set_to_none=True)
        loss.backward()
        opt_k.step()

    cases[f"train/selective_x{SEEDS}_batched"] = timer(step_batched, sync)
    t = measure(cases, repeats)
    mix = {
        (kind, nets): sum(MIX[a] * t[f"{kind}/{nets}/{a}"] for a in POOL)
        for kind in ("infer", "train") for nets in ("uniform", "one_group")
    }
    return {
        "phase2_infer_vs_uniform_mix": t["infer/mixed"] / mix["infer", "uniform"],
        "phase2_train_vs_uniform_mix": t["train/mixed"] / mix["train", "uniform"],
        "phase2_infer_vs_one_group_mix": t["infer/mixed"] / mix["infer", "one_group"],
        "phase2_train_vs_one_group_mix": t["train/mixed"] / mix["train", "one_group"],
        "phase1_train_vs_uniform_mix": t["train/selective"] / mix["train", "uniform"],
        "phase1_train_vs_stack_all_k": t["train/selective"] / t["train/stack_all_k"],
        f"seeds{SEEDS}_batched_train_vs_1_seed": t[f"train/selective_x{SEEDS}_batched"]
        / t["train/selective"],
        "gather_scatter_infer_vs_uniform_mix": t["infer/gather_scatter"] / mix["infer", "uniform"],
        "gather_scatter_train_vs_uniform_mix": t["train/gather_scatter"] / mix["train", "uniform"],
        "relu_infer_ms": 1e3 * t["infer/uniform/relu"],
        "relu_train_ms": 1e3 * t["train/uniform/relu"],
    }


def run_compiled(device: str, batch: int, hidden, repeats: int) -> dict[str, float]:
    """The phase ratios with every net trained and evaluated through ``torch.compile`` (the
    slots in their compile forms, as ``--compile on`` trains), and the compile time."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    in_f, classes = 784, 10
    x = torch.randn(1, batch, in_f, device=dev)
    y = torch.randint(0, classes, (1, batch), device=dev)
    torch._dynamo.config.recompile_limit = 256  # 8 nets x 2 modes share the same code
    torch._dynamo.config.accumulated_recompile_limit = 4096
    sel = selective_net(hidden, in_f, classes, dev)
    nets = {"selective": sel, "mixed": freeze(sel.eval()).to(dev)}
    nets |= {a: MLP(in_f, hidden, classes, lambda i, n, a=a: Activation(a)).to(dev)
             for a in POOL}
    t0 = time.perf_counter()
    cases = {}
    for name, net in nets.items():
        net.use_compiled_forms(True)
        fwd, opt = torch.compile(net), optimizer(net)

        def train(net=net, fwd=fwd, opt=opt) -> None:
            net.train()
            loss = seed_losses(fwd(x), y).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def infer(net=net, fwd=fwd) -> None:
            net.eval()
            with torch.no_grad():
                fwd(x)

        train(), infer(), train()  # compile both modes, then leave it in training mode
        cases[f"train/{name}"] = timer(train, sync)
        if name != "selective":
            cases[f"infer/{name}"] = timer(infer, sync)
    compile_s = time.perf_counter() - t0
    t = measure(cases, repeats)
    mix = {kind: sum(MIX[a] * t[f"{kind}/{a}"] for a in POOL) for kind in ("infer", "train")}
    return {
        "compiled_phase2_infer_vs_uniform_mix": t["infer/mixed"] / mix["infer"],
        "compiled_phase2_train_vs_uniform_mix": t["train/mixed"] / mix["train"],
        "compiled_phase1_train_vs_uniform_mix": t["train/selective"] / mix["train"],
        "compiled_relu_train_ms": 1e3 * t["train/relu"],
        "compile_seconds_8_nets": compile_s,
    }


def epoch_vs_dataloader(device: str, batch: int, hidden, batches: int, repeats: int) -> float:
    """Time per batch of a torchvision-DataLoader loop (MNIST-sized, per-sample PIL ->
    ToTensor -> Normalize) over that of the core's loop (whole dataset as a device tensor,
    one index permutation), same model and optimiser step; a full epoch scales both alike."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    loader, images, labels = mnist_like_loader(batch)
    x_all = (images.float().div(255).sub(0.1307).div(0.3081)).flatten(1).to(dev)
    y_all = labels.to(dev)
    model = MLP(784, hidden, 10, lambda i, n: Activation("relu")).to(dev)
    opt = optimizer(model)
    gen = torch.Generator().manual_seed(0)

    def train_on(xb: torch.Tensor, yb: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(model(xb.unsqueeze(0))[0], yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def tensors() -> None:
        order = torch.randperm(len(x_all), generator=gen).to(dev)
        for i in range(batches):
            idx = order[i * batch : (i + 1) * batch]
            train_on(x_all[idx], y_all[idx])

    def dataloader() -> None:
        for i, (xb, yb) in enumerate(loader):
            train_on(xb.to(dev, non_blocking=True).flatten(1), yb.to(dev, non_blocking=True))
            if i + 1 == batches:
                break

    t = measure({"tensors": timer(tensors, sync), "dataloader": timer(dataloader, sync)}, repeats)
    return t["dataloader"] / t["tensors"]


SEEDS = 8

TARGETS = {
    "phase2_infer_vs_uniform_mix": ("<=", 1.2),
    "phase2_train_vs_uniform_mix": ("<=", 1.3),
    "phase1_train_vs_uniform_mix": ("<=", 2.0),
    "compiled_phase2_infer_vs_uniform_mix": ("<=", 1.2),
    "compiled_phase2_train_vs_uniform_mix": ("<=", 1.3),
    "compiled_phase1_train_vs_uniform_mix": ("<=", 2.0),
    f"seeds{SEEDS}_batched_train_vs_1_seed": ("<=", 2.0),
    "epoch_dataloader_vs_tensors": (">=", 20.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="128,1024")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="tiny net, few repeats (smoke test)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--compile", action="store_true",
                    help="also the phase ratios through torch.compile (minutes on a CPU)")
    ap.add_argument("--no-dataloader", action="store_true", help="skip the DataLoader figure")
    args = ap.parse_args()
    hidden = (32, 16) if args.quick else PAPER_ARCHITECTURES[REPRESENTATIVE]
    repeats = 3 if args.quick else args.repeats
    results = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "net": "784-" + "-".join(map(str, hidden)) + "-10",
        "mix": MIX,
        "by_batch": {},
    }
    for b in (int(v) for v in args.batches.split(",")):
        results["by_batch"][b] = run(args.device, b, hidden, repeats)
        if not args.no_dataloader:
            results["by_batch"][b]["epoch_dataloader_vs_tensors"] = epoch_vs_dataloader(
                args.device, b, hidden, batches=2 if args.quick else 20, repeats=min(repeats, 5))
        if args.compile:
            results["by_batch"][b] |= run_compiled(args.device, b, hidden, repeats)
    print(f"device={args.device} threads={results['threads']} net={results['net']}")
    print(
        f"{'figure':42s}"
        + "".join(f"{'batch ' + str(b):>12s}" for b in results["by_batch"])
        + "   target"
    )
    for key in next(iter(results["by_batch"].values())):
        target = " ".join(map(str, TARGETS.get(key, ("", ""))))
        print(
            f"{key:42s}"
            + "".join(f"{r[key]:12.3f}" for r in results["by_batch"].values())
            + f"   {target}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
