"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """../shared/fixtures: required in CI (CI=true), skipped elsewhere when missing."""
    if not SHARED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared fixtures missing at {SHARED} (required in CI)")
        pytest.skip(f"shared fixtures missing at {SHARED}")
    return SHARED
