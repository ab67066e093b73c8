"""The real test services: a local two-node SLURM cluster and an S3 endpoint, started by the fixtures."""

from __future__ import annotations

import time

import pytest


@pytest.mark.slurm
def test_slurm_batch_job_runs_and_writes_output(slurm_cluster, tmp_path):
    script = tmp_path / "job.sh"
    out = tmp_path / "job.out"
    script.write_text("#!/bin/bash\necho hello from $SLURM_JOB_ID on $(hostname -s)\n")
    sub = slurm_cluster.run("sbatch", "--parsable", f"--output={out}", str(script))
    job_id = sub.stdout.strip().split(";")[0]
    assert job_id.isdigit()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().strip():
            break
        time.sleep(0.5)
    assert out.read_text().startswith(f"hello from {job_id} on ")


@pytest.mark.slurm
def test_slurm_srun_two_tasks(slurm_cluster):
    res = slurm_cluster.run("srun", "-N1", "-n2", "bash", "-c", "echo task $SLURM_PROCID", timeout=60)
    assert sorted(res.stdout.split("\n")[:2]) == ["task 0", "task 1"]


@pytest.mark.slurm
def test_slurm_two_node_step_runs_one_task_on_each_node(slurm_cluster):
    assert slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N").stdout.split() == ["n1", "n2"]
    res = slurm_cluster.run("srun", "-N2", "-n2", "bash", "-c", "echo $SLURM_PROCID $SLURMD_NODENAME", timeout=60)
    assert sorted(res.stdout.splitlines()) == ["0 n1", "1 n2"]


@pytest.mark.s3
def test_s3_round_trip_through_s3fs(s3_endpoint):
    fs = s3_endpoint.filesystem()
    payload = bytes(range(256)) * 100
    path = f"{s3_endpoint.bucket}/roundtrip/blob.bin"
    with fs.open(path, "wb") as f:
        f.write(payload)
    assert fs.cat(path) == payload
    assert fs.ls(f"{s3_endpoint.bucket}/roundtrip") == [path]


@pytest.mark.s3
def test_s3_through_fsspec_url_and_env(s3_env):
    import fsspec

    opts = {"client_kwargs": {"endpoint_url": s3_env.url}}
    with fsspec.open(f"s3://{s3_env.bucket}/env/x.txt", "w", **opts) as f:
        f.write("ok")
    with fsspec.open(f"s3://{s3_env.bucket}/env/x.txt", "r", **opts) as f:
        assert f.read() == "ok"


def test_real_images_are_there(test_data):
    assert (test_data / "jsrt" / "metadata.csv").is_file()
    assert len(list((test_data / "jsrt").glob("images/*.png"))) >= 200 or any((test_data / "jsrt").rglob("*.png"))
