"""Pin the numeric kernels of a DVC stage so its outputs are the same bytes on any x86-64-v3 machine.

Floating-point results depend on more than the code and the locked packages: OpenBLAS picks its kernels by CPU
(AVX-512 ``SkylakeX`` kernels sum a dot product in another order than AVX2 ``Haswell`` ones), and by thread
count; numpy dispatches ``exp``, ``log``, ``log2``, ``arcsin`` (and its sorts) to AVX-512 code where the CPU
has it, whose last bit differs from the other paths; scikit-learn's histogram gradient boosting sums gradients
over OpenMP threads, so its trees depend on the thread count. Measured in this project: logistic regression
(and every Platt calibrator) differs between AVX-512 and AVX2 kernels, HistGradientBoosting between 1 and 2
OpenMP threads, the synthetic truth's quadrature probabilities between numpy's AVX-512 and AVX2 paths.

:func:`pin_numeric_kernels` runs first in ``python -m pipeline`` (what every DVC stage calls), before numpy or
any library that loads OpenBLAS or OpenMP is imported, because these libraries read their settings once, when
they load:

- one thread for OpenMP, OpenBLAS and MKL (the cross-validation keeps its process parallelism, ``train.n_jobs``);
- numpy's AVX-512 dispatch targets disabled (``NPY_DISABLE_CPU_FEATURES``), so AVX-512 and AVX2 CPUs take the
  same code paths;
- OpenBLAS's Haswell kernels (``OPENBLAS_CORETYPE``) on every Linux x86-64 CPU with AVX2 and FMA, i.e. the same
  kernels on an AMD EPYC, an Intel Xeon with AVX-512 or a laptop without it. A CPU without AVX2/FMA keeps its
  own kernels (Haswell ones would not run there), and its C library's ``exp``/``log`` differ in the last bit
  too: such a machine is not covered (README, "Same bytes").

The values are set, not defaulted: a stage is meant to reproduce ``dvc.lock``, whatever the shell exports.
``TRD_NATIVE_KERNELS=1`` leaves the environment alone (all threads, the CPU's own kernels: faster on a big
machine, and outputs that may differ from the committed ``dvc.lock`` in the last bit).

Only the standard library is imported here.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from collections.abc import MutableMapping
from importlib import metadata
from pathlib import Path

OPT_OUT = "TRD_NATIVE_KERNELS"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
# numpy's AVX-512 dispatch targets: numpy >= 2.4 groups them as X86_V4 (+ ICL, SPR); older numpy names each one
# (a name numpy does not know is ignored with an ImportWarning)
NUMPY_AVX512_TARGETS = "X86_V4 AVX512_ICL AVX512_SPR"
NUMPY_AVX512_TARGETS_BEFORE_2_4 = "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_SPR"
OPENBLAS_CORE = "Haswell"
# libraries that read the settings above when they load: too late once one of them is imported
EARLY_LOADED = ("numpy", "scipy", "sklearn", "xgboost", "pyarrow")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def numpy_version() -> tuple[int, int]:
    """(major, minor) of the installed numpy, read from its metadata without importing it."""
    try:
        major, minor, *_ = metadata.version("numpy").split(".")
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def pinned_settings(machine: str, flags: frozenset[str], numpy: tuple[int, int]) -> dict[str, str]:
    """The environment variables that pin the kernels on this machine."""
    settings = dict.fromkeys(THREAD_VARIABLES, "1")
    if machine in ("x86_64", "AMD64"):
        settings["NPY_DISABLE_CPU_FEATURES"] = (
            NUMPY_AVX512_TARGETS if numpy >= (2, 4) else NUMPY_AVX512_TARGETS_BEFORE_2_4
        )
        if {"avx2", "fma"} <= flags:
            settings["OPENBLAS_CORETYPE"] = OPENBLAS_CORE
    return settings


def pin_numeric_kernels(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the pinned settings in ``environ`` (default ``os.environ``); returns what was set ({} if opted out)."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "").strip() not in ("", "0"):
        return {}
    loaded = [name for name in EARLY_LOADED if name in sys.modules]
    if loaded and environ is os.environ:
        warnings.warn(
            f"numeric kernels pinned after {', '.join(loaded)} was imported: outputs may differ by machine",
            RuntimeWarning,
            stacklevel=2,
        )
    settings = pinned_settings(platform.machine(), cpu_flags(), numpy_version())
    environ.update(settings)
    return settings
