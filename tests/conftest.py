"""Shared test fixtures: where the reference outputs live, small deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    env = os.environ.get("PANOPTIC_DETR_REFERENCE")
    return Path(env) if env else ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if not (path / "README.md").exists():
        pytest.fail(f"reference fixtures not found at {path}; set PANOPTIC_DETR_REFERENCE")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
