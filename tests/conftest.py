"""Shared fixtures: the real sample clips in ``../shared/datasets`` (override with SHARED_DATASETS)."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Path of the shared sample data; the tests fail loudly when it is missing."""
    root = Path(os.environ.get("SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))
    if not root.is_dir():
        pytest.fail(f"sample data not found at {root}; set SHARED_DATASETS to ../shared/datasets")
    return root.resolve()


@pytest.fixture(scope="session")
def talking_clips(shared_datasets: Path) -> Path:
    return shared_datasets / "talking-clips"
