"""Shared fixtures: a fresh workspace per test, one thread for torch, and the one local Spark session."""
from __future__ import annotations

import os
import shutil
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


# ---------------------------------------------------------------------------------------- Spark

needs_java = pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
                                reason="Spark needs Java 17+ (apt-get install openjdk-17-jre-headless)")


@pytest.fixture(scope="session")
def spark():
    """The one local Spark session (``local[2]``, 4 shuffle partitions) every Spark test file shares:
    its JVM starts once per test run. Test files import ``needs_java`` (and may import ``spark``) from
    tests/test_spark.py, which re-exports both."""
    from workbench import spark as wbspark

    s = wbspark.session(config=wbspark.SparkConfig(master="local[2]", shuffle_partitions=4))
    yield s
    wbspark.stop()


def pytest_collection_modifyitems(config, items):
    """Tests using a Spark Connect server run last: connecting stops this process's local Spark session
    (one session per process), and every other Spark test shares that session (``spark``)."""
    last = [item for item in items if "connect_server" in getattr(item, "fixturenames", ())]
    if last:
        items[:] = [item for item in items if item not in last] + last
