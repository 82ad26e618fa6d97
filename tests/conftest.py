"""Shared test configuration: CPU only, one thread, deterministic, fixtures from ../shared/compat."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
COMPAT = Path(os.environ.get("PAGODA_COMPAT", REPO.parent / "shared" / "compat"))

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture
def compat_dir():
    if not COMPAT.is_dir():
        pytest.fail(f"golden fixtures not found at {COMPAT}; set PAGODA_COMPAT or put shared/ beside the repo")
    return COMPAT
