"""Real test services started by the test session: a two-node SLURM cluster and an S3 endpoint.

Both live entirely under a temporary folder with their own ports, sockets and pid files, so
a second test session on the same machine (or stale leftovers of a killed one) never
collides with them. The two SLURM nodes are two `slurmd -N NAME` daemons on this machine,
each with its own port and spool folder: a job of `--nodes 2` gets one task per node, as on
a real cluster, while one-node jobs run on either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
    """munged + slurmctld + one slurmd per node name, all on this host, configured under `root`.

    The node names (`n1`, `n2`) do not resolve: every node has NodeAddr=127.0.0.1, so whatever
    needs a node's address (a rendezvous) must ask SLURM for it, as on clusters whose node
    names are not host names.
    """

    root: Path
    nodes: tuple[str, ...] = ("n1", "n2")
    cpus: int = 4  # advertised per node; slurmd's config_overrides lets a 2-core box run several small jobs
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def _start_munge(self) -> Path:
        r = self.root
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
        return sock

    def _node_lines(self) -> list[str]:
        host = socket.gethostname().split(".")[0]
        return [f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs={self.cpus} "
                "RealMemory=16000 State=UNKNOWN" for n in self.nodes]

    def write_conf(self, sock: Path) -> None:
        r = self.root
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            "\n".join([
                "ClusterName=dinotrain-test",
                f"SlurmctldHost={host}",
                f"SlurmctldPort={free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={sock}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool' / '%n'}",  # %n: the node name, one folder per slurmd
                f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'run' / 'slurmd-%n.pid'}",
                f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
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
                *self._node_lines(),
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
                "",
            ])
        )

    def start(self) -> LocalSlurm:
        r = self.root
        for d in ("munge", "state", "spool", "log", "run", *(f"spool/{n}" for n in self.nodes)):
            (r / d).mkdir(parents=True, exist_ok=True)
        self.write_conf(self._start_munge())
        env = self.env
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        for n in self.nodes:
            self.procs.append(subprocess.Popen(["slurmd", "-D", "-N", n], env=env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait(self._nodes_up, 60, "slurmctld + slurmd", r / "log" / "slurmctld.log")
        return self

    def _nodes_up(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{' '.join(p.args)} exited with {p.returncode}; see {self.root / 'log'}")
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            return False
        up = {name for name, _, st in (ln.partition(" ") for ln in out.stdout.splitlines())
              if st.rstrip("*") in ("idle", "mixed", "allocated")}
        return up == set(self.nodes)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def preempt(self, job, n_tasks: int = 1, timeout: float = 90) -> None:
        """Preempt a submitit job as `Job._interrupt()` does (SIGTERM to every task, then USR2, whose
        handler checkpoints and runs `scontrol requeue`), but with the two signals in order.

        Each `scancel --signal` returns once the controller has the request; slurmstepd delivers
        later. Sent back to back, a late SIGTERM can reach the step's processes after USR2 and kill
        the `scontrol requeue` child its handler started (seen under load: the job then ends FAILED,
        "scontrol requeue died with SIGTERM"). So USR2 goes out only once every task has logged
        that it received (and bypassed) SIGTERM.
        """
        folder = Path(str(job.paths.stdout)).parent
        logs = [folder / f"{job.job_id}_{r}_log.out" for r in range(n_tasks)]

        def bypassed() -> int:
            return sum(p.read_text(errors="replace").count("Bypassing signal SIGTERM") for p in logs if p.is_file())

        before = bypassed()
        self.run("scancel", str(job.job_id), "--signal", "SIGTERM")
        deadline = time.monotonic() + timeout
        while bypassed() < before + n_tasks:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job.job_id}: SIGTERM not seen by its {n_tasks} task(s) in {timeout:.0f}s")
            time.sleep(0.2)
        self.run("scancel", str(job.job_id), "--signal", "USR2")

    def release_requeued(self, job_id: str, timeout: float = 90) -> None:
        """Start a requeued job within seconds instead of after SLURM's hold (Reason=BeginTime).

        The hold is there for a reason: slurmd refuses a launch whose credential is not newer
        than the kill that ended the previous attempt ("Job N already killed, do not launch
        batch job") and the job then FAILS for good. Credentials have one-second resolution,
        so StartTime=now can land in the same second as that kill (seen: 1 job in 6); now+2
        cannot. The hold is set when the killed job finishes completing, which may come after
        the job already reads PENDING: keep releasing until it runs.
        """
        deadline = time.monotonic() + timeout
        seen_pending = False
        while time.monotonic() < deadline:
            out = self.run("squeue", "-h", "-j", job_id, "-o", "%T|%r", check=False).stdout.strip()
            state, _, reason = out.partition("|")
            if state == "PENDING":
                seen_pending = True
                if reason == "BeginTime":
                    self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now+2", check=False)
            elif seen_pending and state in ("RUNNING", "COMPLETING", "COMPLETED"):
                return
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} was not requeued and restarted within {timeout:.0f}s")

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
        # a job still finishing when the daemons stop keeps its slurmstepd, batch script and srun
        # (seen: hours later, waiting for a slurmd that is gone); make sure none outlive the session
        for pid in self._job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()

    def _job_processes(self) -> list[int]:
        """Pids of this cluster's job processes: slurmstepd, batch scripts, srun and tasks.

        Their command lines do not name the cluster (`slurmstepd: [1.batch]`), but they all
        started with this cluster's SLURM_CONF in their environment.
        """
        want = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                environ = (d / "environ").read_bytes()
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if want in environ.split(b"\0"):
                pids.append(int(d.name))
        return pids


@contextlib.contextmanager
def cpu_burners(n: int, seconds: float) -> Iterator[None]:
    """`n` busy-loop processes that stop by themselves after `seconds` (or when the block ends).

    Load for tests that look for races in code which polls other processes: on a loaded
    machine daemons and tasks answer late, and the windows between their steps widen.
    """
    code = f"import time\nend = time.monotonic() + {float(seconds)}\nwhile time.monotonic() < end:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


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
