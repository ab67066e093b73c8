"""Real test services started by the test session: a one-node SLURM cluster and an S3 endpoint.

Both live entirely under a temporary folder with their own ports, sockets and pid files, so
a second test session on the same machine (or stale leftovers of a killed one) never
collides with them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout: float, what: str, poll_s: float = 0.5) -> None:
    """Poll `cond()` until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def _wait(cond, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s{tail}")


def slurm_missing() -> list[str]:
    return [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol") if shutil.which(b) is None]


@dataclass
class LocalSlurm:
    """munged + slurmctld + slurmd on this host, configured under `root`."""

    root: Path
    cpus: int = 8  # advertised; slurmd's config_overrides lets a 2-core box run several small jobs
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def start(self) -> LocalSlurm:
        r = self.root
        for d in ("munge", "state", "spool", "log", "run"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = r / "munge" / "munge.sock"
        munged = subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
             f"--pid-file={r / 'run' / 'munged.pid'}", f"--seed-file={r / 'munge' / 'seed'}",
             f"--log-file={r / 'log' / 'munged.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        self.procs.append(munged)
        _wait(sock.exists, 20, "munged", r / "log" / "munged.log")

        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            "\n".join([
                "ClusterName=dinotrain-test",
                f"SlurmctldHost={host}",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={sock}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool'}",
                f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
                f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "SchedulerType=sched/backfill",
                "SlurmdParameters=config_overrides",
                "MpiDefault=none",
                "ReturnToService=2",
                "JobRequeue=1",
                "MaxArraySize=1000",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=30",
                "InactiveLimit=0",
                "MinJobAge=600",
                "KillWait=5",
                "Waittime=0",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                f"NodeName={host} CPUs={self.cpus} RealMemory=16000 State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
                "",
            ])
        )
        env = self.env
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        self.procs.append(subprocess.Popen(["slurmd", "-D"], env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait(self._node_idle, 60, "slurmctld + slurmd", r / "log" / "slurmctld.log")
        return self

    def _node_idle(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; see {self.root / 'log'}")
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated")

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def stop(self) -> None:
        # daemons first (they need munge to shut down cleanly), munged last
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        # job steps of killed jobs are children of slurmstepd; make sure none outlive the session
        subprocess.run(["pkill", "-f", f"slurmstepd.*{self.root}"], capture_output=True)
        self.procs.clear()


@dataclass
class S3Endpoint:
    """moto's ThreadedMotoServer on 127.0.0.1 with one bucket, as s3fs's own tests do."""

    bucket: str = "dinotrain-test"
    port: int = 0
    server: object = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point boto3/s3fs/DALI at this endpoint (fake credentials)."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> S3Endpoint:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server.start()
        import boto3

        # boto3 directly: s3fs's mkdir sends a LocationConstraint that us-east-1 rejects
        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=self.bucket)
        return self

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            key="testing", secret="testing", client_kwargs={"endpoint_url": self.url, "region_name": "us-east-1"},
            skip_instance_cache=True,
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
