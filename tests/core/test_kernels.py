"""The compiled CPU kernels: the groups bitwise as ATen computes them, the fused selection
as the registry computes it up to rounding, values independent of the number of threads,
the layers' results with and without them, and a build that is safe to fail."""

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
PAPER = POOLS["paper"]
PAPER_CODES = [ACTIVATIONS[n].kernel for n in PAPER]

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="kernels not built here")


@pytest.fixture
def two_threads():
    """Two intra-op threads even on a 1-core machine, so rows are spread over threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def groups_input(sizes, batch, dtype):
    x = torch.randn(sum(sizes), batch, dtype=dtype) * 3
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30], dtype=dtype)  # ties at the kinks
    x[-1, :2] = torch.tensor([100.0, -100.0], dtype=dtype)  # saturation
    return x


def test_codes_are_distinct_and_cover_the_paper_pool():
    codes = [ACTIVATIONS[n].kernel for n in KERNEL_NAMES]
    assert sorted(codes) == list(range(len(codes)))
    assert set(PAPER) <= set(GRAD_NAMES)
    assert kernels.codes(PAPER, grads=True) == tuple(PAPER_CODES)
    assert kernels.codes(("relu", "silu")) == (0, ACTIVATIONS["silu"].kernel)
    assert kernels.codes(("relu", "silu"), grads=True) is None  # no gradient from its output
    assert kernels.codes(("relu", "prelu")) is None


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [128, 7])  # full vectors / short rows
def test_activate_groups_equals_each_registry_function(two_threads, dtype, batch):
    sizes = [130, 0, 61, 5, 150, 149, 90, 40][: len(KERNEL_NAMES)]
    x = groups_input(sizes, batch, dtype)
    codes = [ACTIVATIONS[n].kernel for n in KERNEL_NAMES]
    out = x.clone()
    assert kernels.activate_groups_(out, sizes, codes) is out
    for name, xb, ob in zip(KERNEL_NAMES, x.split(sizes), out.split(sizes)):
        assert torch.equal(ob, ACTIVATIONS[name].fn(xb)), name  # ATen's own kernels


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


def selection_reference(x, g, choice, pool):
    """Row by row with the registry: outputs, input gradients and every member's sums."""
    out = torch.stack([ACTIVATIONS[pool[c]].fn(row) for row, c in zip(x, choice.tolist())])
    gx = torch.stack([ACTIVATIONS[pool[c]].grad(gr, yr, torch.empty_like(yr))
                      for gr, yr, c in zip(g, out, choice.tolist())])
    sums = torch.stack([(g * ACTIVATIONS[n].fn(x)).sum(1) for n in pool], 1)
    return out, gx, sums


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [128, 77])
@pytest.mark.parametrize("pool", [PAPER, ("tanh", "selu"), ("elu", "relu", "sigmoid")])
def test_fused_selection_equals_the_registry_row_by_row(two_threads, dtype, batch, pool):
    x = groups_input([300], batch, dtype)
    choice = torch.randint(0, len(pool), (300,))
    g = torch.randn_like(x)
    codes = kernels.codes(tuple(pool), grads=True)
    out = kernels.select_forward(x, choice, codes)
    grad_x, sums = kernels.select_backward(g, x, out, choice, codes)
    ref_out, ref_gx, ref_sums = selection_reference(x, g, choice, pool)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(grad_x, ref_gx)
    assert sums.shape == (300, len(pool)) and sums.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10  # sums of 128 terms, another order
    torch.testing.assert_close(sums, ref_sums, rtol=tol, atol=tol)


@needs_kernels
def test_selection_does_not_depend_on_threads_and_groups_equal_the_python_path():
    """Random pools, choices, group sizes, batches and thread counts: the fused selection
    gives bitwise the values of one thread; the groups give bitwise the values of one ATen
    call per group at the same number of threads (the Python path; ATen's own split of a
    large block depends on the thread count)."""
    gen = torch.Generator().manual_seed(5)
    before = torch.get_num_threads()
    try:
        for _ in range(30):
            k = int(torch.randint(1, len(GRAD_NAMES) + 1, (), generator=gen))
            names = [GRAD_NAMES[i] for i in torch.randperm(len(GRAD_NAMES), generator=gen)[:k]]
            sizes = torch.randint(0, 300, (k,), generator=gen).tolist()
            batch = int(torch.randint(1, 200, (), generator=gen))
            dtype = (torch.float32, torch.float64)[int(torch.randint(0, 2, (), generator=gen))]
            x = torch.randn(sum(sizes), batch, generator=gen, dtype=dtype) * 3
            g = torch.randn(sum(sizes), batch, generator=gen, dtype=dtype)
            choice = torch.randint(0, k, (sum(sizes),), generator=gen)
            codes = [ACTIVATIONS[n].kernel for n in names]
            case = (names, sizes, batch, dtype)

            def selection(x=x, g=g, choice=choice, codes=codes):
                out = kernels.select_forward(x, choice, codes)
                return [out, *kernels.select_backward(g, x, out, choice, codes)]

            torch.set_num_threads(int(torch.randint(2, 5, (), generator=gen)))
            many = selection()
            out = kernels.activate_groups_(x.clone(), sizes, codes)
            grad_x = kernels.grad_groups(g, out, sizes, codes)
            expected = [ACTIVATIONS[n].fn(xb) for n, xb in zip(names, x.split(sizes))]
            assert torch.equal(out, torch.cat(expected)), case
            expected = [ACTIVATIONS[n].grad(gb, yb, torch.empty_like(yb))
                        for n, gb, yb in zip(names, g.split(sizes), out.split(sizes))]
            assert torch.equal(grad_x, torch.cat(expected)), case
            torch.set_num_threads(1)
            for a, b in zip(many, selection()):
                assert torch.equal(a, b), case
    finally:
        torch.set_num_threads(before)


@needs_kernels
def test_bad_sizes_are_refused():
    x = torch.randn(10, 4)
    with pytest.raises(RuntimeError, match="add up to 9, not 10"):
        kernels.activate_groups_(x, [4, 5], [0, 1])
    with pytest.raises(RuntimeError, match="one code per group"):
        kernels.activate_groups_(x, [4, 6], [0])
    with pytest.raises(RuntimeError, match="no output gradient"):
        kernels.grad_groups(x, x, [4, 6], [0, ACTIVATIONS["silu"].kernel])
    with pytest.raises(RuntimeError, match="choice 2 outside the pool"):
        kernels.select_forward(x, torch.tensor([0, 1, 2, 0, 0, 0, 0, 0, 0, 0]), [0, 1])
    with pytest.raises(RuntimeError, match="one choice per unit"):
        kernels.select_forward(x, torch.zeros(9, dtype=torch.long), [0, 1])
    with pytest.raises(RuntimeError, match="no kernel for activation code 99"):
        kernels.activate_groups_(x, [10], [99])


def paper_mlp_outputs(phase: int, dtype=torch.float32):
    torch.manual_seed(3)
    net = MLP(20, [300, 200], 5, lambda i, n: SelectiveActivation(n, POOLS["paper"])).to(dtype)
    for slot in net.acts:
        slot.logits.data.normal_(0, 2)
    if phase == 2:
        net = freeze(net.eval())
    x = torch.randn(100, 20, dtype=dtype, requires_grad=True)  # shares end inside vectors
    net.train()
    torch.manual_seed(4)
    out = net(x)
    out.backward(torch.randn_like(out))
    with torch.no_grad():
        inference = net.eval()(x)
    return [out.detach(), inference, x.grad, *(p.grad for p in net.parameters())]


@needs_kernels
def test_phase2_networks_are_bitwise_the_same_with_and_without_kernels(two_threads):
    with_kernels = paper_mlp_outputs(2)
    with kernels.off():
        assert not kernels.usable(torch.randn(4, 4), 0)
        without = paper_mlp_outputs(2)
    assert kernels.usable(torch.randn(4, 4), 0)
    assert len(with_kernels) == len(without) == 3 + 6  # outputs, x.grad, 3 linear layers
    for a, b in zip(with_kernels, without):
        assert torch.equal(a, b)  # the same ATen kernels, shares cut at whole vectors


@needs_kernels
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_phase1_networks_agree_with_and_without_kernels(two_threads, dtype, tol):
    """The fused selection uses ATen's vector formulas in its own loops, exp-based terms in
    the logits' gradient and sums in another order: equal up to rounding."""
    with_kernels = paper_mlp_outputs(1, dtype)
    with kernels.off():
        without = paper_mlp_outputs(1, dtype)
    assert len(with_kernels) == len(without) == 3 + 6 + 2  # ..., 2 layers of logits
    for a, b in zip(with_kernels, without):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


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


@needs_kernels
def test_copies_and_pickles_keep_the_kernels(monkeypatch):
    """Kernel codes come from activation names, not function identity: a deep copy or a
    pickle (how Ray ships a model) runs the same kernels and gives the same values."""
    import copy
    import pickle

    torch.manual_seed(0)
    net = MLP(20, [30], 5, lambda i, n: SelectiveActivation(n, PAPER))
    net.acts[0].logits.data.normal_()
    net = freeze(net.eval())
    assert net.acts[0].counts[PAPER.index("leaky_relu")] > 0  # its in-place form is a partial
    x = torch.randn(9, 20)
    calls = []
    real = kernels.activate_groups_
    monkeypatch.setattr(kernels, "activate_groups_", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        expected = net(x)
        for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
            before = len(calls)
            assert torch.equal(other(x), expected)
            assert len(calls) == before + 1
