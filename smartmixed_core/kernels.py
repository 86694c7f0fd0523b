"""Compiled CPU kernels of the selective and mixed layers (optional, built once per machine).

In the MLP's units-first layout a selective or mixed layer holds its pre-activations in one
contiguous ``[units, batch]`` buffer, one row per unit (``kernels.cpp``).

* Phase 1: :func:`select_forward` runs each row through its unit's chosen activation in one
  vectorised loop, rows spread over ATen's threads, with no sorting and no gather;
  :func:`select_backward` computes, in one pass over a row, the input gradient (from the
  saved output) and the row's sum of ``grad * act_k(x)`` for every pool member ``k``, the
  gradient of the straight-through sample.
* Phase 2: :func:`groups_forward` adds the layer's bias and activates all of a mixed
  layer's contiguous groups in one such pass (one call per layer instead of one per group,
  each group spread over the threads even when it is below ATen's parallel grain), with its
  backward pass (:func:`groups_backward`: the input gradient and the bias's) registered for
  autograd in C++; :func:`groups_forward_` is the in-place form of the inference plans.

Activations use float32 forms of their own for exp, expm1, sigmoid and tanh: a range
reduction and a Taylor polynomial, within 4 units of 2^-24 relative of the float64 values
(tested; ATen's own float32 forms measure 1 - 2.5), where ATen's vector (Sleef) ``expm1``
costs about 2 ns per element on this machine's cores, several times more.  float64 keeps
ATen's forms.  The candidate sums build every member from one ``exp(-|x|)`` per element,
exact to about 1e-7 per term in float32.  The measured effect is in the README's Performance
section.  Kernel codes come from activation names (:attr:`ActivationSpec.kernel`), so copies
and pickles of a model use them too.

The source is compiled with torch's C++ extension tooling, for the vector instructions torch
itself uses on this CPU (AVX512, AVX2 or none), the first time a process needs it (about
20 s on a 2-core machine; a C++ compiler is required) into a cache directory keyed by the
source, the flags, torch and Python, and loaded from there afterwards.  Builds go to a
private temporary directory and are moved into place atomically, so processes that build at
the same time (Ray workers on a fresh node) never wait on each other's locks.
``smartmixed kernels`` builds ahead of time (``make install`` and the Docker image run it).
Without a compiler, or with ``SMARTMIXED_KERNELS=0``, the layers use their Python paths
(sorting, one ATen call per group, the candidate sums basis function by basis function) and
say so once.

Environment: ``SMARTMIXED_KERNELS=0`` disables the kernels; ``SMARTMIXED_KERNELS_DIR``
moves the cache (default ``$XDG_CACHE_HOME/smartmixed/kernels`` or
``~/.cache/smartmixed/kernels``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from smartmixed_core.activations import ACTIVATIONS

log = logging.getLogger(__name__)

ENABLE_ENV = "SMARTMIXED_KERNELS"
DIR_ENV = "SMARTMIXED_KERNELS_DIR"
NAME = "smartmixed_kernels"
SOURCE = Path(__file__).with_name("kernels.cpp")



def _openmp() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


# ATen's vector code for each CPU capability torch reports (its own build flags for it).
_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}


def _flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags: this machine's vector instructions as torch uses them
    (scalar code elsewhere), OpenMP when ATen's own thread pool is OpenMP's."""
    capability = torch.backends.cpu.get_cpu_capability()
    cflags = ["-O3", *_CAPABILITY_FLAGS.get(capability, ["-DCPU_CAPABILITY=DEFAULT"])]
    return ([*cflags, "-fopenmp"], ["-fopenmp"]) if _openmp() else (cflags, [])


def library_path() -> Path:
    """Where the built library lives for this source, torch and Python."""
    cflags, ldflags = _flags()
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), torch.__version__, sys.version, *cflags, *ldflags]).encode()
    ).hexdigest()[:16]
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "smartmixed"
    root = Path(os.environ.get(DIR_ENV) or default / "kernels")
    return root / key / f"{NAME}.so"


_BUILD = """
import json, logging, sys
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # no-CUDA notice
from torch.utils import cpp_extension
a = json.loads(sys.argv[1])
print(cpp_extension.load(a["name"], [a["source"]], extra_cflags=a["cflags"],
                         extra_ldflags=a["ldflags"], build_directory=a["dir"],
                         is_python_module=False, verbose=False))
"""


def build(path: Path) -> None:
    """Compile the source into ``path``: in a child process (torch's tooling also loads what
    it builds, and a process registers the ops once), in a private folder, then moved."""
    cflags, ldflags = _flags()
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=path.parent))
    try:
        args = {"name": NAME, "source": str(SOURCE), "cflags": cflags, "ldflags": ldflags,
                "dir": str(work)}
        done = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(args)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            log.debug("%s", done.stderr)
            lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
            named = [ln for ln in lines if re.search(r"\berror:|: not found", ln, re.IGNORECASE)]
            raise RuntimeError((named or lines or [f"exit status {done.returncode}"])[0])
        os.replace(done.stdout.strip().splitlines()[-1], path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def enabled() -> bool:
    """False when ``SMARTMIXED_KERNELS=0``."""
    return os.environ.get(ENABLE_ENV, "1").strip() != "0"


FAILED = "build-failed.txt"
"""Written next to the library's place when a build fails: later processes (every Ray
worker, every command) skip the build instead of failing again; ``smartmixed kernels``
retries."""


@functools.cache
def available() -> bool:
    """Load the kernels (building them first if needed); False, said once per process, when
    they cannot be had.  Called on a layer's first CPU pass, not at import."""
    if not enabled():
        return False
    path = library_path()
    failed = path.with_name(FAILED)
    try:
        if not path.exists():
            if failed.exists():
                raise RuntimeError(f"an earlier build failed: {failed.read_text().strip()}; "
                                   "`smartmixed kernels` tries again")
            log.warning("smartmixed: compiling the CPU kernels for this torch, once "
                        "(about 20 s; %s=0 skips them)", ENABLE_ENV)
            start = time.perf_counter()
            try:
                build(path)
            except Exception as err:
                with contextlib.suppress(OSError):  # an unwritable cache: nothing to record
                    failed.parent.mkdir(parents=True, exist_ok=True)
                    failed.write_text(_first_line(err) + "\n")
                raise
            log.info("smartmixed: kernels built in %.0f s: %s", time.perf_counter() - start, path)
        if not _registered():  # a process registers the ops once, from whichever file
            torch.ops.load_library(str(path))
    except Exception as err:  # no compiler, unwritable cache, ...: the Python path serves
        log.warning("smartmixed: compiled kernels unavailable (%s); using the Python "
                    "path", _first_line(err))
        return False
    return True


def retry() -> bool:
    """Forget an earlier failed build and this process's verdict, then :func:`available`."""
    library_path().with_name(FAILED).unlink(missing_ok=True)
    available.cache_clear()
    return available()


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _registered() -> bool:
    return hasattr(torch.ops.smartmixed, "select_forward")


_switched_off = False
DTYPES = (torch.float32, torch.float64)


@contextlib.contextmanager
def off() -> Iterator[None]:
    """Within this block the layer takes its Python path (for A/B timings and checks)."""
    global _switched_off
    before, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = before


def active() -> bool:
    """The kernels are loaded and not switched :func:`off`."""
    return not _switched_off and available()


def usable(x: Tensor, dim: int, differentiable: bool = False) -> bool:
    """Whether the kernels can take ``x``: units on dimension 0 of a contiguous float32 or
    float64 CPU matrix, unless switched :func:`off`.  Only :func:`groups_forward` has an
    autograd formula (``differentiable``); the selection ops need ``x`` outside autograd (the
    layer's own backward calls :func:`select_backward`)."""
    return (dim == 0 and x.dim() == 2 and x.device.type == "cpu" and x.dtype in DTYPES
            and x.is_contiguous()
            and (differentiable or not (x.requires_grad and torch.is_grad_enabled()))
            and active())


@functools.cache
def codes(names: tuple[str, ...]) -> tuple[int, ...] | None:
    """The kernel codes of a pool (registry names): None unless every member has one."""
    found = tuple(ACTIVATIONS[n].kernel for n in names)
    return None if None in found else found  # type: ignore[return-value]


def select_forward(x: Tensor, choice: Tensor, codes: Sequence[int]) -> Tensor:
    """Row ``u`` of ``x`` (``[units, batch]``) through activation ``codes[choice[u]]``."""
    return torch.ops.smartmixed.select_forward(x, choice, codes)


def select_backward(grad: Tensor, x: Tensor, out: Tensor, choice: Tensor,
                    codes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(grad_x, sums)`` of :func:`select_forward`: the input gradient (from the output
    ``out``) and ``sums[u, k]``, the sum over the batch of ``grad * act_k(x)`` for every pool
    member ``k``, in one pass."""
    return torch.ops.smartmixed.select_backward(grad, x, out, choice, codes)


def groups_forward(x: Tensor, sizes: Sequence[int], codes: Sequence[int],
                   bias: Tensor | None = None) -> Tensor:
    """A mixed layer's activations: the ``g``-th contiguous block of ``sizes[g]`` rows of ``x``
    (``[units, batch]``), plus ``bias`` (one per row) if given, through activation
    ``codes[g]``, into a new tensor.  Differentiable in ``x`` and ``bias``: its backward pass
    (:func:`groups_backward` on the saved output) is registered in C++."""
    return torch.ops.smartmixed.groups_forward(x, bias, sizes, codes)


def groups_forward_(x: Tensor, sizes: Sequence[int], codes: Sequence[int],
                    bias: Tensor | None = None) -> Tensor:
    """:func:`groups_forward` in place."""
    return torch.ops.smartmixed.groups_forward_(x, bias, sizes, codes)


def groups_backward(grad: Tensor, out: Tensor, sizes: Sequence[int],
                    codes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(grad_x, grad_bias)`` of :func:`groups_forward` from its output ``out``: the input
    gradient and its sum over each row, in one pass."""
    return torch.ops.smartmixed.groups_backward(grad, out, sizes, codes)
