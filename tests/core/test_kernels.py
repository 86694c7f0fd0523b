"""The compiled CPU group kernels: identical to the Python path, built and loaded safely."""

from __future__ import annotations

import logging

import pytest
import torch

from smartmixed_core import kernels
from smartmixed_core.activations import ACTIVATIONS, POOLS
from smartmixed_core.cli import main
from smartmixed_core.freeze import freeze
from smartmixed_core.layers import SelectiveActivation
from smartmixed_core.models import MLP

KERNEL_NAMES = sorted(n for n, s in ACTIVATIONS.items() if s.kernel is not None)
GRAD_NAMES = [n for n in KERNEL_NAMES if ACTIVATIONS[n].grad is not None]

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="kernels not built here")


@pytest.fixture
def two_threads():
    """Two intra-op threads even on a 1-core machine, so every block is split in shares."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def groups_input(sizes, batch, dtype):
    x = torch.randn(sum(sizes), batch, dtype=dtype) * 3
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30], dtype=dtype)  # ties at the kinks
    return x


def test_codes_are_distinct_and_cover_the_paper_pool():
    codes = [ACTIVATIONS[n].kernel for n in KERNEL_NAMES]
    assert sorted(codes) == list(range(len(codes)))
    assert set(POOLS["paper"]) <= set(GRAD_NAMES)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [128, 7])  # split across threads / one share
def test_activate_groups_equals_each_registry_function(two_threads, dtype, batch):
    sizes = [130, 0, 61, 5, 150, 149, 90, 40][: len(KERNEL_NAMES)]
    x = groups_input(sizes, batch, dtype)
    codes = [ACTIVATIONS[n].kernel for n in KERNEL_NAMES]
    out = x.clone()
    assert kernels.activate_groups_(out, sizes, codes) is out
    for name, xb, ob in zip(KERNEL_NAMES, x.split(sizes), out.split(sizes)):
        assert torch.equal(ob, ACTIVATIONS[name].fn(xb)), name


@needs_kernels
def test_values_do_not_depend_on_the_number_of_threads():
    """Random groups, batches and thread counts: the exact values of one single-threaded ATen
    call per group (where a share ends inside a vector, ATen's scalar tail could round
    differently)."""
    gen = torch.Generator().manual_seed(5)
    before = torch.get_num_threads()
    try:
        for _ in range(40):
            k = int(torch.randint(1, len(KERNEL_NAMES) + 1, (), generator=gen))
            names = [KERNEL_NAMES[i] for i in torch.randperm(len(KERNEL_NAMES), generator=gen)[:k]]
            sizes = torch.randint(0, 300, (k,), generator=gen).tolist()
            batch = int(torch.randint(1, 200, (), generator=gen))
            dtype = (torch.float32, torch.float64)[int(torch.randint(0, 2, (), generator=gen))]
            x = torch.randn(sum(sizes), batch, generator=gen, dtype=dtype) * 3
            torch.set_num_threads(int(torch.randint(2, 5, (), generator=gen)))
            out = kernels.activate_groups_(x.clone(), sizes, [ACTIVATIONS[n].kernel for n in names])
            torch.set_num_threads(1)
            expected = [ACTIVATIONS[n].fn(xb) for n, xb in zip(names, x.split(sizes))]
            assert torch.equal(out, torch.cat(expected)), (names, sizes, batch, dtype)
    finally:
        torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [128, 7])
def test_grad_groups_equals_each_registry_gradient(two_threads, dtype, batch):
    sizes = [200, 3, 77, 150, 0, 160][: len(GRAD_NAMES)]
    x = groups_input(sizes, batch, dtype)
    codes = [ACTIVATIONS[n].kernel for n in GRAD_NAMES]
    out = kernels.activate_groups_(x.clone(), sizes, codes)
    grad = torch.randn_like(x).t().contiguous().t()  # a non-contiguous incoming gradient
    got = kernels.grad_groups(grad, out, sizes, codes)
    parts = zip(GRAD_NAMES, x.split(sizes), out.split(sizes), grad.split(sizes), got.split(sizes))
    for name, xb, ob, gb, gotb in parts:
        assert torch.equal(gotb, ACTIVATIONS[name].grad(gb, ob, torch.empty_like(ob))), name
        xr = xb.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(ACTIVATIONS[name].fn(xr), xr, gb)
        torch.testing.assert_close(gotb, expected, msg=name)


@needs_kernels
def test_bad_sizes_are_refused():
    x = torch.randn(10, 4)
    with pytest.raises(RuntimeError, match="add up to 9, not 10"):
        kernels.activate_groups_(x, [4, 5], [0, 1])
    with pytest.raises(RuntimeError, match="one code per group"):
        kernels.activate_groups_(x, [4, 6], [0])
    with pytest.raises(RuntimeError, match="no output gradient"):
        kernels.grad_groups(x, x, [4, 6], [0, ACTIVATIONS["silu"].kernel])


def paper_mlp_outputs(phase: int):
    torch.manual_seed(3)
    net = MLP(20, [300, 200], 5, lambda i, n: SelectiveActivation(n, POOLS["paper"]))
    for slot in net.acts:
        slot.logits.data.normal_(0, 2)
    if phase == 2:
        net = freeze(net.eval())
    x = torch.randn(100, 20, requires_grad=True)  # shares end inside vectors
    net.train()
    torch.manual_seed(4)
    out = net(x)
    out.backward(torch.randn_like(out))
    with torch.no_grad():
        inference = net.eval()(x)
    return [out.detach(), inference, x.grad, *(p.grad for p in net.parameters())]


@needs_kernels
@pytest.mark.parametrize("phase", [1, 2])
def test_networks_are_bitwise_the_same_with_and_without_kernels(two_threads, phase):
    with_kernels = paper_mlp_outputs(phase)
    with kernels.off():
        assert not kernels.usable(torch.randn(4, 4), 0)
        without = paper_mlp_outputs(phase)
    assert kernels.usable(torch.randn(4, 4), 0)
    assert len(with_kernels) == len(without)
    for a, b in zip(with_kernels, without):
        assert torch.equal(a, b)


@needs_kernels
def test_layers_use_the_kernels_on_units_first_cpu_buffers(two_threads, monkeypatch):
    calls = []
    real = kernels.activate_groups_
    monkeypatch.setattr(kernels, "activate_groups_", lambda *a: calls.append(a[1]) or real(*a))
    paper_mlp_outputs(2)
    assert calls and all(sum(sizes) in (300, 200) for sizes in calls)


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """``available()`` decided anew, with the cache in ``tmp_path``."""
    monkeypatch.setenv(kernels.DIR_ENV, str(tmp_path))
    kernels.available.cache_clear()
    yield tmp_path
    kernels.available.cache_clear()


def test_disabled_by_environment(fresh_state, monkeypatch):
    monkeypatch.setenv(kernels.ENABLE_ENV, "0")
    assert not kernels.available()
    assert not kernels.usable(torch.randn(4, 4), 0)
    assert not any(fresh_state.iterdir())


def test_a_failed_build_falls_back_says_so_and_is_not_retried_until_asked(
        fresh_state, monkeypatch, caplog):
    attempts = []

    def fail(path):
        attempts.append(path)
        raise RuntimeError("kernels.cpp:3:1: error: bad\nlong compiler log")

    monkeypatch.setattr(kernels, "build", fail)
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        assert not kernels.available()
    assert "unavailable (kernels.cpp:3:1: error: bad); using the Python path" in caplog.text
    assert "long compiler log" not in caplog.text
    layer = freeze(MLP(6, [8], 3, lambda i, n: SelectiveActivation(n, POOLS["paper"])).eval())
    assert layer(torch.randn(5, 6)).shape == (5, 3)  # the Python path serves
    kernels.available.cache_clear()  # another process: no second build
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        assert not kernels.available()
    assert len(attempts) == 1 and "an earlier build failed: kernels.cpp:3:1: error: bad" \
        in caplog.text
    assert main(["kernels"]) == 1 and len(attempts) == 2  # the command tries again


@needs_kernels
def test_builds_into_an_empty_cache_and_the_cli_reports_it(fresh_state, capsys):
    path = kernels.library_path()
    assert path.is_relative_to(fresh_state) and not path.exists()
    kernels.build(path)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the build folder is gone
    assert main(["kernels"]) == 0
    assert str(path) in capsys.readouterr().out
