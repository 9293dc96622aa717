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


@pytest.fixture
def one_thread():
    """One intra-op torch thread: on the shared 2-core machine two threads contend badly (10x slower
    training steps). Test files that train use it for every test (``pytest.mark.usefixtures``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
