"""Shared pytest configuration: hypothesis profiles and helpers used across the suite."""

import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, settings

# "default": what developers and CI run. Derandomized so a CI failure reproduces locally.
settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
# "thorough": more examples, random seeds; run with TERNREF_HYPOTHESIS=thorough.
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("TERNREF_HYPOTHESIS", "default"))


@pytest.fixture
def run_without_jit():
    """Run a Python script with ``NUMBA_DISABLE_JIT=1`` (the kernels as plain Python, the
    debugger path) and assert that it exits cleanly and prints exactly ``ok``."""

    def run(script: str) -> None:
        env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "ok"

    return run
