"""The benchmark baselines compute the same function as the layers they are compared with."""

import torch

from benchmarks.__main__ import run, selective_net
from benchmarks.baselines import GatherScatterMixed, StackAllK
from smartmixed_core.names import POOLS
from smartmixed_core.phase2 import freeze

POOL = POOLS["paper"]


def test_gather_scatter_equals_frozen_mixed_net():
    sel = selective_net((24, 12), 784, 10, "cpu").eval()
    mixed, gather = freeze(sel), freeze(sel)
    for i, slot in enumerate(sel.acts):
        gather.acts[i] = GatherScatterMixed(POOL, slot.choices())
    gather.load_state_dict(sel.state_dict(), strict=False)  # unpermuted weights
    x = torch.randn(1, 16, 784)
    torch.testing.assert_close(gather(x), sel(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed(x), sel(x), rtol=1e-5, atol=1e-5)


def test_stack_all_k_equals_fused_selective():
    sel = selective_net((24,), 784, 10, "cpu")
    stacked = selective_net((24,), 784, 10, "cpu", StackAllK)
    x = torch.randn(1, 8, 784)
    a = sel(x)  # both draw seed 0's first Gumbel noise
    b = stacked(x)
    torch.testing.assert_close(a, b)


def test_quick_benchmark_reports_every_figure():
    r = run("cpu", 32, (16, 8), repeats=2)
    assert set(r) >= {"phase2_infer_vs_uniform_mix", "phase1_train_vs_stack_all_k"}
    assert all(v > 0 for v in r.values())
