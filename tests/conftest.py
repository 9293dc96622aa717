"""Shared fixtures: a fresh workspace per test, and a small generated sample data set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """An empty workspace folder; WORKBENCH_HOME points at it for the test."""
    ws = tmp_path / "workspace"
    monkeypatch.setenv("WORKBENCH_HOME", str(ws))
    return ws


@pytest.fixture
def con(workspace):
    import workbench

    c = workbench.connect(workspace)
    yield c
    c.close()
