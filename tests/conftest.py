"""Shared pytest configuration: hypothesis profiles and helpers used across the suite."""

import os

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
