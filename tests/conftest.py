"""Session fixtures: real SLURM, real S3 endpoint, real images. Started by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.services import LocalSlurm, S3Endpoint, slurm_missing

REPO = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))

# shard sets built from the real images, shared by the data, train and launch tests
pytest_plugins = ["tests.shard_fixtures"]


def _unavailable(msg: str):
    """Under CI a missing service is a failure (a green run must not hide it); locally a skip."""
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node SLURM cluster; `slurm_cluster.env` carries SLURM_CONF for subprocesses."""
    missing = slurm_missing()
    if missing:
        _unavailable(f"SLURM binaries missing ({', '.join(missing)}): run `bash scripts/setup.sh`")
    if os.geteuid() != 0:
        _unavailable("the local SLURM fixture runs its daemons as root (SlurmUser=root); run the tests as root")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 endpoint with bucket `s3_endpoint.bucket`; `s3_endpoint.env` points clients at it."""
    pytest.importorskip("moto.server", reason="moto[server] missing: run `bash scripts/setup.sh`")
    server = S3Endpoint().start()
    yield server
    server.stop()


@pytest.fixture()
def s3_env(s3_endpoint, monkeypatch):
    """The S3 endpoint's variables set in this process for one test."""
    for k, v in s3_endpoint.env.items():
        monkeypatch.setenv(k, v)
    return s3_endpoint


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The real image folders (../shared/data by default, or $DINOTRAIN_TEST_DATA)."""
    root = Path(os.environ.get("DINOTRAIN_TEST_DATA", REPO.parent / "shared" / "data"))
    needed = ["jsrt/metadata.csv", "covid_cxr/metadata.csv"]
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        _unavailable(
            f"real test images missing under {root} ({', '.join(missing)}): set DINOTRAIN_TEST_DATA "
            "to the folder holding jsrt/, covid_cxr/, busi_ultrasound/ ... (see shared/data/README.md)"
        )
    return root
