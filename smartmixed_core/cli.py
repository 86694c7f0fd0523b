"""``smartmixed train``: the command function (typer options) of the core.

The ``smartmixed`` app that mounts ``train``, ``sweep`` and ``analyze`` is
:mod:`smartmixed.cli`, above all three packages: the core imports neither ``sweeps`` nor
``analysis`` (nor Ray or MLflow), so ``smartmixed train`` starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from smartmixed_core.activations import POOLS
from smartmixed_core.config import METHODS_HELP, RunConfig
from smartmixed_core.data import DATASETS, check_data
from smartmixed_core.errors import ConfigError, check_output_dir


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or a range ``"0-4"``."""
    try:
        if "-" in text.strip("-") and "," not in text:
            lo, hi = (int(p) for p in text.split("-"))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(
            "seeds", f"expected integers like '0,1,2' or '0-4', got {text!r}"
        ) from None
    if not seeds or any(s < 0 or s > 2**31 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"need distinct integers in [0, 2^31], got {text!r}")
    return seeds


def train(
    dataset: Annotated[str, typer.Option(help=f"One of: {', '.join(DATASETS)}.")] = "digits",
    arch: Annotated[
        Optional[str],
        typer.Option(help="Hidden widths '64,32' or a paper architecture 'paper:784-512-10'."),
    ] = None,
    method: Annotated[str, typer.Option(help=METHODS_HELP)] = "smartmixed",
    layer_activations: Annotated[Optional[str], typer.Option(
        help="perlayer: one activation per hidden layer, e.g. relu,elu,elu.")] = None,
    model: Annotated[str, typer.Option(help="mlp or convnet.")] = "mlp",
    pool: Annotated[
        Optional[str],
        typer.Option(help=f"Pool name ({', '.join(POOLS)}) or comma list of activations."),
    ] = None,
    epochs: int = 40,
    transition_epoch: Annotated[int, typer.Option(help="Phase-1 epochs (smartmixed).")] = 15,
    temperature: float = 0.3,
    temperature_end: Annotated[
        Optional[float], typer.Option(help="Temperature at the end of phase 1 (default: constant).")
    ] = None,
    temperature_schedule: str = "exponential",
    phase2_init: Annotated[str, typer.Option(help="transfer or reinit.")] = "transfer",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    batch_size: int = 64,
    grad_clip: Optional[float] = None,
    patience: Optional[int] = None,
    restore: Annotated[str, typer.Option(
        help="Reported weights: best val_loss epoch, best val_accuracy epoch, or last.")
    ] = "val_loss",
    gate: Annotated[str, typer.Option(help="Mixture gate: layer, neuron or input.")] = "layer",
    gate_temperature: float = 1.0,
    entropy_weight: float = 0.0,
    split_per_seed: Annotated[bool, typer.Option(
        help="Each seed draws its own train/validation split (split seed + seed).")] = False,
    train_size: Annotated[Optional[int], typer.Option(
        help="Train on a stratified subset of this many training examples.")] = None,
    seeds: Annotated[str, typer.Option(help="'0,1,2' or '0-4'.")] = "0",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    compile: Annotated[str, typer.Option(help="torch.compile of the training forward pass: "
                                         "auto (on for CUDA, off on a CPU), on, off.")] = "auto",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with image datasets.")] = None,
    download: bool = False,
    out: Annotated[
        Path, typer.Option(help="Output folder for result.json and checkpoints.")
    ] = Path("runs/train"),
    checkpoints: Annotated[bool, typer.Option(help="Write one checkpoint per seed.")] = True,
    batch_seeds: Annotated[
        str,
        typer.Option(help="Train the seeds together as one model with a seeds dimension "
                    "(auto, on) or one after another (off: less memory, same numbers)."),
    ] = "auto",
    quiet: bool = False,
) -> None:
    """Train one configuration for several seeds; write OUT/result.json."""
    from smartmixed_core.progress import EpochProgress
    from smartmixed_core.runner import load_data, save_checkpoint, train_seeds

    seed_list = parse_seeds(seeds)
    if batch_seeds not in ("auto", "on", "off"):
        raise ConfigError("batch_seeds", f"expected auto, on or off, got {batch_seeds!r}")
    cfg = RunConfig(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        download=download,
        model=model,
        arch=arch,
        method=method,
        layer_activations=layer_activations,
        pool=pool,
        temperature=temperature,
        temperature_end=temperature_end,
        temperature_schedule=temperature_schedule,
        transition_epoch=transition_epoch,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        batch_size=batch_size,
        grad_clip=grad_clip,
        patience=patience,
        restore=restore,
        train_size=train_size,
        split_per_seed=split_per_seed,
        phase2_init=phase2_init,
        gate=gate,
        gate_temperature=gate_temperature,
        entropy_weight=entropy_weight,
        device=device,
        compile=compile,
    )
    check_data(cfg.dataset, cfg.data_dir, cfg.download)  # before anything is trained
    check_output_dir("out", out)
    data = load_data(cfg, seed_list)
    batched = {"auto": None, "on": True, "off": False}[batch_seeds]
    with EpochProgress(cfg.epochs, seed_list, enabled=not quiet) as progress:
        doc, outcomes = train_seeds(
            cfg, seed_list, callbacks=progress.callbacks, data=data, batched=batched
        )
    out.mkdir(parents=True, exist_ok=True)
    if checkpoints:
        (out / "checkpoints").mkdir(exist_ok=True)
        for o in outcomes:
            save_checkpoint(out / "checkpoints" / f"seed_{o.summary['seed']}.pt", cfg, o)
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=True))
    tmp.replace(out / "result.json")
    s = doc["summary"]
    typer.echo(
        f"{cfg.method} on {cfg.dataset} [{cfg.arch}], {s['n_seeds']} seed(s): "
        f"test accuracy {s['test_accuracy_mean']:.4f} ± {s['test_accuracy_std']:.4f}, "
        f"macro F1 {s['test_f1_macro_mean']:.4f}  ->  {out / 'result.json'}"
    )
