"""Kernel pinning of the DVC stages (pipeline/kernels.py) and the generator's BLAS-free copula."""

from __future__ import annotations

import ast
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.kernels import (
    NUMPY_AVX512_TARGETS,
    NUMPY_AVX512_TARGETS_BEFORE_2_4,
    OPT_OUT,
    THREAD_VARIABLES,
    cpu_flags,
    pin_numeric_kernels,
    pinned_settings,
)
from pipeline.synthesize.cohort import cholesky, correlate

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_x86_64_with_avx2_and_fma_gets_one_thread_no_avx512_and_haswell_kernels() -> None:
    settings = pinned_settings("x86_64", frozenset({"sse4_2", "avx2", "fma", "avx512f"}), (2, 4))
    assert all(settings[name] == "1" for name in THREAD_VARIABLES)
    assert settings["NPY_DISABLE_CPU_FEATURES"] == NUMPY_AVX512_TARGETS
    assert settings["OPENBLAS_CORETYPE"] == "Haswell"


def test_older_numpy_gets_its_own_names_for_the_avx512_targets() -> None:
    settings = pinned_settings("x86_64", frozenset({"avx2", "fma"}), (2, 3))
    assert settings["NPY_DISABLE_CPU_FEATURES"] == NUMPY_AVX512_TARGETS_BEFORE_2_4


def test_a_cpu_without_avx2_keeps_its_own_blas_kernels() -> None:
    """Haswell kernels would not run there (illegal instruction): only threads and numpy are pinned."""
    settings = pinned_settings("x86_64", frozenset({"sse4_2", "avx"}), (2, 4))
    assert "OPENBLAS_CORETYPE" not in settings
    assert "NPY_DISABLE_CPU_FEATURES" in settings


def test_other_architectures_get_one_thread_only() -> None:
    assert pinned_settings("aarch64", frozenset({"asimd"}), (2, 4)) == dict.fromkeys(THREAD_VARIABLES, "1")


def test_pinning_overrides_the_shell_and_the_opt_out_leaves_it_alone() -> None:
    environ = {"OMP_NUM_THREADS": "8", "OPENBLAS_CORETYPE": "SkylakeX"}
    set_here = pin_numeric_kernels(environ)
    assert environ["OMP_NUM_THREADS"] == "1"
    assert set_here["OMP_NUM_THREADS"] == "1"
    native = {OPT_OUT: "1", "OMP_NUM_THREADS": "8"}
    assert pin_numeric_kernels(native) == {}
    assert native == {OPT_OUT: "1", "OMP_NUM_THREADS": "8"}


def test_cpu_flags_reads_the_flags_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_stage_entry_point_pins_before_anything_else_is_imported() -> None:
    """pipeline/__main__.py (every DVC stage) calls pin_numeric_kernels before its first other import."""
    body = ast.parse((REPO_ROOT / "pipeline" / "__main__.py").read_text()).body
    statements = [node for node in body if not isinstance(node, ast.Expr) or not isinstance(node.value, ast.Constant)]
    assert isinstance(statements[0], ast.ImportFrom)
    assert statements[0].module == "pipeline.kernels"
    call = statements[1]
    assert isinstance(call, ast.Expr)
    assert isinstance(call.value, ast.Call)
    assert call.value.func.id == "pin_numeric_kernels"


def test_the_libraries_load_with_the_pinned_kernels() -> None:
    """In a fresh interpreter, whatever the shell asks for: one thread everywhere, numpy without AVX-512, and
    (on x86-64 with AVX2 and FMA) OpenBLAS's Haswell kernels in numpy's and scipy's copies."""
    script = (
        "from pipeline.kernels import pin_numeric_kernels\n"
        "pin_numeric_kernels()\n"
        "import json, numpy, scipy.linalg, sklearn.ensemble, threadpoolctl\n"
        "from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__\n"
        "enabled = [name for name in __cpu_dispatch__ if __cpu_features__[name]]\n"
        "print(json.dumps({'pools': threadpoolctl.threadpool_info(), 'numpy': enabled}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4", "OPENBLAS_CORETYPE": "Prescott"}
    env.pop(OPT_OUT, None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    report = json.loads(result.stdout)
    assert {pool["num_threads"] for pool in report["pools"]} == {1}
    assert not any("512" in name or name == "X86_V4" for name in report["numpy"]), report["numpy"]
    blas = [pool for pool in report["pools"] if pool["internal_api"] == "openblas"]
    assert len(blas) == 2  # numpy's and scipy's
    if platform.machine() == "x86_64" and {"avx2", "fma"} <= cpu_flags():
        assert {pool["architecture"] for pool in blas} == {"Haswell"}


# -- the copula without LAPACK or BLAS --------------------------------------------------------------------------


@pytest.fixture
def correlation() -> np.ndarray:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((14, 30))
    cov = a @ a.T
    scale = 1 / np.sqrt(np.diag(cov))
    return cov * scale[:, None] * scale[None, :]


def test_cholesky_is_the_lower_factor(correlation: np.ndarray) -> None:
    low = cholesky(correlation)
    assert np.array_equal(low, np.tril(low))
    np.testing.assert_allclose(low @ low.T, correlation, rtol=0, atol=1e-14)
    np.testing.assert_allclose(low, np.linalg.cholesky(correlation), rtol=0, atol=1e-14)


def test_correlate_is_the_matrix_product_and_does_not_depend_on_the_batch(correlation: np.ndarray) -> None:
    low = cholesky(correlation)
    normals = np.random.default_rng(4).standard_normal((1001, 14))
    latent = correlate(normals, low)
    np.testing.assert_allclose(latent, normals @ low.T, rtol=0, atol=1e-14)
    # each row is its own sequence of rounded operations: any subset of rows gives the same bits
    assert np.array_equal(correlate(normals[5:12], low), latent[5:12])
    assert np.array_equal(correlate(normals[::-1], low), latent[::-1])
