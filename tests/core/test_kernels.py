"""The compiled CPU kernels: the fused selection as the registry computes it up to rounding,
values independent of the number of threads, the layer's results with and without them,
and a build that is safe to fail."""

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


def selection_input(units, batch, dtype):
    x = torch.randn(units, batch, dtype=dtype) * 3
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30], dtype=dtype)  # ties at the kinks
    x[-1, :2] = torch.tensor([100.0, -100.0], dtype=dtype)  # saturation
    return x


def test_codes_are_distinct_and_cover_the_paper_pool():
    codes = [ACTIVATIONS[n].kernel for n in KERNEL_NAMES]
    assert sorted(codes) == list(range(len(codes)))
    assert sorted(KERNEL_NAMES) == sorted(PAPER)
    assert all(ACTIVATIONS[n].grad is not None for n in KERNEL_NAMES)  # backward needs them
    assert kernels.codes(PAPER) == tuple(PAPER_CODES)
    assert kernels.codes(("relu", "silu")) is None
    assert kernels.codes(POOLS["adact"]) is None


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
    x = selection_input(300, batch, dtype)
    choice = torch.randint(0, len(pool), (300,))
    g = torch.randn_like(x)
    codes = kernels.codes(tuple(pool))
    out = kernels.select_forward(x, choice, codes)
    grad_x, sums = kernels.select_backward(g, x, out, choice, codes)
    ref_out, ref_gx, ref_sums = selection_reference(x, g, choice, pool)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(grad_x, ref_gx)
    assert sums.shape == (300, len(pool)) and sums.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10  # sums of 128 terms, another order
    torch.testing.assert_close(sums, ref_sums, rtol=tol, atol=tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [128, 77])
@pytest.mark.parametrize("pool", [PAPER, ("tanh", "selu"), ("elu", "relu", "sigmoid")])
def test_groups_equal_the_registry_row_by_row(two_threads, dtype, batch, pool):
    """A mixed layer's contiguous groups (one of them empty) in one pass: out of place, in
    place, and the input gradient from the output."""
    sizes = [70, 0, 130, 1, 60, 39][: len(pool)]
    sizes[-1] += 300 - sum(sizes)
    x = selection_input(300, batch, dtype)
    before = x.clone()
    g = torch.randn_like(x)
    codes = kernels.codes(tuple(pool))
    choice = torch.repeat_interleave(torch.arange(len(pool)), torch.tensor(sizes))
    out = kernels.groups_forward(x, sizes, codes)
    assert torch.equal(x, before)
    ref_out, ref_gx, _ = selection_reference(x, g, choice, pool)
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(out, kernels.select_forward(x, choice, codes))  # the same row loop
    grad_x, grad_bias = kernels.groups_backward(g, out, sizes, codes)
    torch.testing.assert_close(grad_x, ref_gx)
    torch.testing.assert_close(grad_bias, ref_gx.sum(1))
    inplace = x.clone()
    assert kernels.groups_forward_(inplace, sizes, codes) is inplace
    assert torch.equal(inplace, out)
    leaf = x.clone().requires_grad_(True)  # the C++ autograd node: same values, gradient
    traced = kernels.groups_forward(leaf, sizes, codes)
    assert "Groups" in traced.grad_fn.name() and torch.equal(traced.detach(), out)
    traced.backward(g)
    assert torch.equal(leaf.grad, grad_x)
    bias = torch.randn(300, dtype=dtype)  # the layer's bias, added in the same pass
    biased = kernels.groups_forward(x, sizes, codes, bias)
    ref_biased, ref_biased_gx, _ = selection_reference(x + bias[:, None], g, choice, pool)
    torch.testing.assert_close(biased, ref_biased)
    assert torch.equal(kernels.groups_forward_(x.clone(), sizes, codes, bias), biased)
    leaf, leaf_bias = x.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    kernels.groups_forward(leaf, sizes, codes, leaf_bias).backward(g)
    torch.testing.assert_close(leaf.grad, ref_biased_gx)
    torch.testing.assert_close(leaf_bias.grad, ref_biased_gx.sum(1))
    if dtype == torch.float64:
        gen = torch.Generator().manual_seed(0)  # away from the kinks at 0
        small = torch.randn(300, 3, generator=gen, dtype=dtype).requires_grad_(True)
        shift = torch.randn(300, generator=gen, dtype=dtype).mul(0.1).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda t, b: kernels.groups_forward(t, sizes, codes, b), (small, shift))


def float32_grid():
    """Dense over the activations' range, tiny magnitudes of both signs, and edge values
    (underflow of exp below -87, saturation, signed zeros, infinities)."""
    tiny = torch.logspace(-40, 1.5, 200_000)
    edges = torch.tensor([0.0, -0.0, -87.5, -87.0, -86.9, -103.0, -1e4, 1e4,
                          float("inf"), float("-inf")])
    return torch.cat([torch.linspace(-100, 100, 1_000_001), tiny, -tiny, edges])


@needs_kernels
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_float32_forms_are_accurate_to_a_few_units_in_the_last_place(name):
    """The kernels' own float32 exp/expm1/sigmoid/tanh forms against float64 references:
    relative error at most 4 units of 2^-24 (ATen's own float32 forms measure 1 - 2.5), or
    below the smallest normal float where the true value is subnormal."""
    x = float32_grid()
    got = kernels.groups_forward(x.view(1, -1), [1], [ACTIVATIONS[name].kernel]).view(-1)
    ref = ACTIVATIONS[name].fn(x.double())
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    finite = torch.isfinite(ref)
    assert torch.equal(got[~finite].double(), ref[~finite])
    err = (got[finite].double() - ref[finite]).abs()
    assert (err <= 4 * 2.0**-24 * ref[finite].abs() + torch.finfo(torch.float32).tiny).all()
    nan = torch.full((1, 3), float("nan"))
    assert torch.isnan(kernels.groups_forward(nan, [1], [ACTIVATIONS[name].kernel])).all()


@needs_kernels
def test_kernels_do_not_depend_on_the_number_of_threads():
    """Random pools, choices, groups, batches and thread counts: bitwise the values of one
    thread."""
    gen = torch.Generator().manual_seed(5)
    before = torch.get_num_threads()
    try:
        for _ in range(30):
            k = int(torch.randint(1, len(KERNEL_NAMES) + 1, (), generator=gen))
            names = [KERNEL_NAMES[i] for i in torch.randperm(len(KERNEL_NAMES), generator=gen)[:k]]
            units = int(torch.randint(1, 600, (), generator=gen))
            batch = int(torch.randint(1, 200, (), generator=gen))
            dtype = (torch.float32, torch.float64)[int(torch.randint(0, 2, (), generator=gen))]
            x = torch.randn(units, batch, generator=gen, dtype=dtype) * 3
            g = torch.randn(units, batch, generator=gen, dtype=dtype)
            choice = torch.randint(0, k, (units,), generator=gen)
            codes = [ACTIVATIONS[n].kernel for n in names]

            sizes = torch.bincount(choice, minlength=k).tolist()  # groups, some empty
            bias = torch.randn(units, generator=gen, dtype=dtype)

            def selection(x=x, g=g, choice=choice, codes=codes, sizes=sizes, bias=bias):
                out = kernels.select_forward(x, choice, codes)
                grouped = kernels.groups_forward(x, sizes, codes, bias)
                return [out, *kernels.select_backward(g, x, out, choice, codes), grouped,
                        *kernels.groups_backward(g, grouped, sizes, codes)]

            torch.set_num_threads(int(torch.randint(2, 5, (), generator=gen)))
            many = selection()
            torch.set_num_threads(1)
            for a, b in zip(many, selection()):
                assert torch.equal(a, b), (names, units, batch, dtype)
    finally:
        torch.set_num_threads(before)


@needs_kernels
def test_bad_input_is_refused():
    x = torch.randn(10, 4)
    with pytest.raises(RuntimeError, match="choice 2 outside the pool"):
        kernels.select_forward(x, torch.tensor([0, 1, 2, 0, 0, 0, 0, 0, 0, 0]), [0, 1])
    with pytest.raises(RuntimeError, match="one choice per unit"):
        kernels.select_forward(x, torch.zeros(9, dtype=torch.long), [0, 1])
    with pytest.raises(RuntimeError, match="no kernel for activation code 99"):
        kernels.select_forward(x, torch.zeros(10, dtype=torch.long), [99])
    with pytest.raises(RuntimeError, match="1 to 6 pool members"):
        kernels.select_forward(x, torch.zeros(10, dtype=torch.long), list(range(7)))
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.select_forward(x.t(), torch.zeros(4, dtype=torch.long), [0])
    with pytest.raises(RuntimeError, match="group sizes add up to 9, not 10 units"):
        kernels.groups_forward(x, [4, 5], [0, 1])
    with pytest.raises(RuntimeError, match="one code per group size"):
        kernels.groups_forward(x, [4, 6], [0])
    with pytest.raises(RuntimeError, match="no kernel for activation code 7"):
        kernels.groups_forward_(x, [10], [7])
    with pytest.raises(RuntimeError, match="grad and out of one shape"):
        kernels.groups_backward(x[:9], x, [10], [0])
    with pytest.raises(RuntimeError, match="one bias per unit"):
        kernels.groups_forward(x, [10], [0], torch.zeros(4))


def paper_mlp_outputs(dtype=torch.float32):
    torch.manual_seed(3)
    net = MLP(20, [300, 200], 5, lambda i, n: SelectiveActivation(n, POOLS["paper"])).to(dtype)
    for slot in net.acts:
        slot.logits.data.normal_(0, 2)
    x = torch.randn(100, 20, dtype=dtype, requires_grad=True)  # shares end inside vectors
    net.train()
    torch.manual_seed(4)
    out = net(x)
    out.backward(torch.randn_like(out))
    with torch.no_grad():
        inference = net.eval()(x)
    results = [out.detach(), inference, x.grad, *(p.grad for p in net.parameters())]
    mixed = freeze(net)  # phase 2: a train step and inference through the groups
    x.grad = None
    out = mixed.train()(x)
    out.backward(torch.randn_like(out))
    with torch.no_grad():
        inference = mixed.eval()(x)
    return [*results, out.detach(), inference, x.grad, *(p.grad for p in mixed.parameters())]


@needs_kernels
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_networks_agree_with_and_without_kernels(two_threads, dtype, tol):
    """Phase 1 and phase 2.  The kernels compute float32 activations with their own forms,
    exp-based terms in the logits' gradient and sums in another order: equal up to
    rounding."""
    with_kernels = paper_mlp_outputs(dtype)
    with kernels.off():
        without = paper_mlp_outputs(dtype)
    assert len(with_kernels) == len(without) == (3 + 6 + 2) + (3 + 6)  # phase 1 has logits
    for a, b in zip(with_kernels, without):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """``available()`` decided anew, with the cache in ``tmp_path``."""
    monkeypatch.setenv(kernels.DIR_ENV, str(tmp_path))
    kernels.available.cache_clear()
    yield tmp_path
    kernels.available.cache_clear()


def test_usable_only_where_the_ops_apply():
    x = torch.randn(6, 4)
    assert kernels.usable(x, 0) == kernels.available()
    assert not kernels.usable(x, 1)  # units on dimension 1: the Python path
    assert not kernels.usable(x.t(), 0)  # not contiguous
    assert not kernels.usable(x.to(torch.bfloat16), 0)
    assert not kernels.usable(torch.randn(6, 4, 2), 0)
    assert not kernels.usable(x.requires_grad_(True), 0)  # recorded by autograd
    net = MLP(6, [8], 3, lambda i, n: SelectiveActivation(n, PAPER)).to(torch.bfloat16)
    net(torch.randn(5, 6, dtype=torch.bfloat16)).float().sum().backward()  # Python path
    assert net.acts[0].logits.grad is not None


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
    net = MLP(6, [8], 3, lambda i, n: SelectiveActivation(n, PAPER))
    x = torch.randn(5, 6, requires_grad=True)
    net(x).sum().backward()  # the Python path serves
    assert x.grad is not None and net.acts[0].logits.grad is not None
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
    x = torch.randn(9, 20)
    calls = []
    real = kernels.select_forward
    monkeypatch.setattr(kernels, "select_forward", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(1)
    expected = net(x)
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        before = len(calls)
        torch.manual_seed(1)
        assert torch.equal(other(x), expected)
        assert len(calls) == before + 1
    mixed = freeze(net)
    grouped = []
    for name in ("groups_forward", "groups_forward_"):
        real_op = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, f=real_op: grouped.append(1) or f(*a))
    expected = mixed(x)
    with torch.no_grad():
        expected_inference = mixed.eval()(x)
    assert len(grouped) == 2
    for other in (copy.deepcopy(mixed), pickle.loads(pickle.dumps(mixed))):
        assert torch.equal(other.train()(x), expected)
        with torch.no_grad():
            assert torch.equal(other.eval()(x), expected_inference)
    assert len(grouped) == 6
