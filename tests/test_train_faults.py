"""What a cluster does to a run, built for real in each test: stop signals at a step that is not a
checkpoint step, two trainings in one folder, a broken newest checkpoint, a deleted meta.json, a
truncated export, a full disk (a real tmpfs), a read-only ckpt/ (a real read-only bind mount).

The reference is one uninterrupted 1-process run of STEPS steps (checkpoints at 3, 6 and 8); a
run that was stopped and resumed must log exactly its losses at every step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dinotrain.train.meta_arch import LossTerms
from tests.test_train_run import REPO, command, env, losses_by_step, train, write_config

STEPS = 8
SETTINGS = {"max_steps": STEPS, "checkpoint_every": 3, "export_every": 0}
pytestmark = pytest.mark.slow


def dinotrain(*args: str, extra_env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dinotrain", *args], cwd=REPO, env={**env(), **(extra_env or {})},
                          capture_output=True, text=True, timeout=timeout)


def assert_same_losses(got: dict, want: dict, steps) -> None:
    for step in steps:
        for k in LossTerms.names():
            assert got[step][k] == pytest.approx(want[step][k], rel=1e-6, abs=1e-7), (step, k)


def start(cfg: Path, *overrides: str, extra_env: dict | None = None) -> subprocess.Popen:
    """A training in the background; its stderr goes to `<cfg>.err` (read with `stderr_of`)."""
    err = open(cfg.with_suffix(".err"), "w")
    proc = subprocess.Popen(command(cfg, 1, *overrides), cwd=REPO, env={**env(), **(extra_env or {})},
                            stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True)
    err.close()
    proc.err_path = cfg.with_suffix(".err")
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    return proc.err_path.read_text()


def wait_until(cond, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        assert proc.poll() is None, stderr_of(proc)[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"{what}: not seen in {timeout:.0f}s")


def wait_for_step(run: Path, proc: subprocess.Popen, step: int) -> None:
    """Until metrics.jsonl holds `step` (the process holds the lock by then)."""
    wait_until(lambda: (run / "metrics.jsonl").is_file() and step in losses_by_step(run), proc, f"step {step}")


def finish(proc: subprocess.Popen) -> str:
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return stderr_of(proc)


def copy_run(reference: Path, dest: Path) -> Path:
    """A copy of the reference run in `dest`, with a config pointing there; returns the config."""
    shutil.copytree(reference, dest)
    cfg = yaml.safe_load((reference / "config.yaml").read_text())
    cfg["output_dir"] = str(dest)
    path = dest.parent / f"{dest.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(cxr_shards, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("faults_ref")
    cfg = write_config(base / "cfg.yaml", cxr_shards, base / "run", **SETTINGS)
    res = train(cfg, 1)
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted(p.name for p in (base / "run" / "ckpt").iterdir()) == ["step_0000003", "step_0000006",
                                                                          "step_0000008"]
    return base / "run"


# ----------------------------------------------------------------------------- stop signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT], ids=lambda s: s.name)
def test_stop_signal_saves_that_step_and_the_resume_loses_nothing(reference, cxr_shards, tmp_path, sig):
    cfg = write_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", **SETTINGS)
    run = tmp_path / "run"
    proc = start(cfg, "train.checkpoint_every=100")  # no periodic checkpoint before the end
    wait_for_step(run, proc, 1)
    os.kill(proc.pid, sig)
    err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    stopped = max(losses_by_step(run))
    assert 1 <= stopped < STEPS  # a step that is not a checkpoint step (only the last is, at every=100)
    assert f"dinotrain train: stopped by {sig.name}: saved at step {stopped} (ckpt/step_{stopped:07d})" in err
    assert [p.name for p in (run / "ckpt").iterdir()] == [f"step_{stopped:07d}"]
    assert not (run / "train.lock").exists()
    res = train(cfg, 1, "train.checkpoint_every=100")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from step {stopped} (ckpt/step_{stopped:07d})" in res.stderr
    got = losses_by_step(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert_same_losses(got, losses_by_step(reference), range(1, STEPS + 1))


def test_a_second_sigint_aborts_at_once(cxr_shards, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", **SETTINGS)
    proc = start(cfg, "train.checkpoint_every=100")
    wait_for_step(tmp_path / "run", proc, 1)
    os.kill(proc.pid, signal.SIGINT)
    # two signals sent before Python runs its handler count once: wait until the first is taken
    wait_until(lambda: "SIGINT received" in stderr_of(proc), proc, "the first SIGINT")
    os.kill(proc.pid, signal.SIGINT)
    err = finish(proc)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "saved at step" not in err


# ----------------------------------------------------------------------------- one writer per folder
def test_a_second_training_into_the_folder_is_refused_naming_the_holder(cxr_shards, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", **SETTINGS)
    run = tmp_path / "run"
    first = start(cfg, extra_env={"SLURM_JOB_ID": "4242"})
    wait_for_step(run, first, 1)
    config_before = (run / "config.yaml").read_bytes()
    os.kill(first.pid, signal.SIGSTOP)  # alive and holding the folder, however slow the second start is
    try:
        second = train(cfg, 1, "train.seed=1", timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    err = finish(first)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "is in use by another training" in lines[0]
    assert f"host {socket.gethostname()}, pid {first.pid}, SLURM job 4242" in lines[0]
    assert first.returncode == 0, err[-3000:]
    assert sorted(losses_by_step(run)) == list(range(1, STEPS + 1))  # each step once, all from the first
    assert (run / "config.yaml").read_bytes() == config_before  # seed 0 stays the recorded seed
    assert not (run / "train.lock").exists()


@pytest.mark.parametrize("job", ["", "4242"], ids=["dead-process", "requeued-slurm-attempt"])
def test_a_lock_left_behind_is_taken_over_with_a_note(cxr_shards, tmp_path, job):
    cfg = write_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", **SETTINGS)
    run = tmp_path / "run"
    first = start(cfg, extra_env={"SLURM_JOB_ID": job})
    try:
        wait_for_step(run, first, 1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # as a node failure would: the lock stays
        first.wait()
    assert json.loads((run / "train.lock").read_text())["pid"] == first.pid
    partial = run / "ckpt" / ".tmp_step_0000002"  # what a kill during a checkpoint write leaves
    partial.mkdir(parents=True)
    (partial / "__0_0.distcp").write_bytes(b"half")
    res = dinotrain("train", str(cfg), "train.max_steps=4", extra_env={"SLURM_JOB_ID": job})  # job's requeue
    assert res.returncode == 0, res.stderr[-3000:]
    reason = f"an earlier attempt of SLURM job {job}" if job else "a training that is gone"
    assert f"took over the lock of {reason} (host {socket.gethostname()}, pid {first.pid}" in res.stderr
    assert not partial.exists()  # removed at start: the lock makes every partial write in the folder stale
    assert not (run / "train.lock").exists()


def test_lock_rules_for_another_job_and_a_live_process():
    from dinotrain.train.run_lock import Holder, stale_reason

    me = Holder.me()
    alive_here = Holder(socket.gethostname(), os.getppid(), "77", time.time(), "")
    assert stale_reason(alive_here, Holder(me.host, me.pid, "78", me.started)) is None  # another job: refused
    assert "earlier attempt of SLURM job 77" in stale_reason(alive_here, Holder(me.host, me.pid, "77", me.started))
    elsewhere = Holder("another-node", 1, "", time.time(), "")
    assert elsewhere.alive() is None and stale_reason(elsewhere, me) is None  # cannot tell: refused



def test_a_killed_holder_not_yet_reaped_is_gone():
    """kill -9 of a training leaves a zombie until its parent reaps it; it answers kill(pid, 0) but
    holds nothing (a resume right after a node-failure kill was refused for it once under load)."""
    from dinotrain.train.run_lock import Holder, _proc_start, stale_reason

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = Holder(socket.gethostname(), child.pid, "", time.time(), _proc_start(child.pid))
        assert holder.alive() is True and stale_reason(holder, Holder.me()) is None
        os.kill(child.pid, signal.SIGKILL)
        wait_until_zombie = time.monotonic() + 30
        while time.monotonic() < wait_until_zombie:
            state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            if state == "Z":
                break
            time.sleep(0.01)
        assert state == "Z"  # not reaped yet: kill(pid, 0) still succeeds
        os.kill(child.pid, 0)
        assert holder.alive() is False and "a training that is gone" in stale_reason(holder, Holder.me())
    finally:
        child.kill()
        child.wait()


# ----------------------------------------------------------------------------- broken newest checkpoint
def _break(run: Path, how: str) -> None:
    data = run / "ckpt" / "step_0000008" / "__0_0.distcp"
    if how == "truncated":
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size // 2)
    elif how == "deleted":
        data.unlink()
    else:  # one byte flipped, size unchanged: only the checksum tells
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated", "deleted", "flipped"])
def test_broken_newest_checkpoint_is_skipped_by_resume_export_and_verify(reference, tmp_path, how):
    cfg = copy_run(reference, tmp_path / "run")
    run = tmp_path / "run"
    _break(run, how)
    ver = dinotrain("verify", str(run))
    assert ver.returncode == 1, ver.stdout + ver.stderr
    lines = ver.stdout.splitlines()
    assert lines[0].startswith("ckpt/step_0000003  complete") and lines[1].startswith("ckpt/step_0000006  complete")
    assert lines[2].startswith("ckpt/step_0000008  BROKEN: __0_0.distcp")
    assert lines[-1] == "resume, eval and export use: ckpt/step_0000006"

    exp = dinotrain("export", str(run), "--format", "dinov2", "--out", str(tmp_path / "exported"))
    assert exp.returncode == 0, exp.stderr[-3000:]
    first = exp.stderr.splitlines()[0]
    assert first.startswith(f"warning: {run}: ckpt/step_0000008 is broken (__0_0.distcp")
    assert first.endswith("skipped; using ckpt/step_0000006")
    assert exp.stderr.splitlines()[1] == f"{run}: using the teacher of step 6 (ckpt/step_0000006)"

    # resume: from step 6, onto the reference's losses at 7 and 8; the broken folder is replaced
    res = train(cfg, 1)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ckpt/step_0000008 is broken" in res.stderr and "resumed from step 6 (ckpt/step_0000006)" in res.stderr
    assert_same_losses(losses_by_step(run), losses_by_step(reference), (7, 8))
    assert dinotrain("verify", str(run)).returncode == 0


def test_deleted_meta_json_the_step_used_is_named_up_front_by_eval_and_export(reference, test_data, tmp_path):
    copy_run(reference, tmp_path / "run")
    run = tmp_path / "run"
    (run / "ckpt" / "step_0000008" / "meta.json").unlink()
    exp = dinotrain("export", str(run), "--out", str(tmp_path / "exported"))
    assert exp.returncode == 0, exp.stderr[-3000:]
    assert exp.stderr.splitlines()[0] == (f"warning: {run}: ckpt/step_0000008 is broken (meta.json is missing): "
                                          "skipped; using ckpt/step_0000006")
    ev = dinotrain("eval", str(run), "--tasks", "jsrt_sex", "--data", str(test_data), "--out", str(tmp_path / "eval"), "--max-samples", "40",
                   "--bootstrap", "10", "--no-plot", "--no-progress", "--resolution", "56",
                   "--cache-dir", str(tmp_path / "cache"))
    assert ev.returncode == 0, ev.stderr[-3000:]
    # eval's first line is its input size (issue 22); the checkpoint it reads is named right after
    assert (ev.stderr.splitlines()[:3] ==
            ["dinotrain eval: at 56 px (--resolution)",
             f"warning: {run}: ckpt/step_0000008 is broken (meta.json is missing): skipped; using ckpt/step_0000006",
             f"{run}: using the teacher of step 6 (ckpt/step_0000006)"])


def test_truncated_export_and_no_checkpoint_is_one_line_naming_the_file(reference, tmp_path):
    copy_run(reference, tmp_path / "run")
    run = tmp_path / "run"
    shutil.rmtree(run / "ckpt")
    weights = run / "export" / "latest" / "dinov2.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 3)
    res = dinotrain("export", str(run), "--out", str(tmp_path / "exported"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dinotrain export: error: {weights} cannot be read"), res.stderr
    assert "truncated or damaged" in lines[0]


# ----------------------------------------------------------------------------- real file systems
def _mount(*args: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not allowed here ({res.stderr.strip()}): run the tests as root "
                    "on a machine that permits mounts")


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_last_one(cxr_shards, tmp_path):
    """A 150 MB tmpfs holds one checkpoint of this model (~90 MB) and not two."""
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=150m", "tmpfs", str(disk))
    try:
        run = disk / "run"
        cfg = write_config(tmp_path / "cfg.yaml", cxr_shards, run, **{**SETTINGS, "keep_checkpoints": 1})
        res = train(cfg, 1)
        assert res.returncode == 2, res.stderr[-3000:]
        assert "a run needs room for two" in res.stderr  # warned before the first step
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("dinotrain train: error: no space left on device writing ckpt/step_0000006 (needs ~")
        assert "MB); the last complete checkpoint, step 3, is intact" in last
        assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step_0000003"]  # partial folder removed
        assert dinotrain("verify", str(run)).returncode == 0
        again = train(cfg, 1)  # resuming while still full: the same one line, from the same checkpoint
        assert again.returncode == 2
        assert "resumed from step 3 (ckpt/step_0000003)" in again.stderr
        assert again.stderr.strip().splitlines()[-1] == last
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_read_only_ckpt_folder_is_refused_before_training(reference, tmp_path):
    cfg = copy_run(reference, tmp_path / "run")
    ckpt = tmp_path / "run" / "ckpt"
    metrics_before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    _mount("--bind", str(ckpt), str(ckpt))
    try:
        _mount("-o", "remount,ro,bind", str(ckpt))
        res = train(cfg, 1, "train.max_steps=12")
    finally:
        subprocess.run(["umount", str(ckpt)], check=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0] == (f"dinotrain train: error: output_dir {tmp_path / 'run'}: {ckpt} is not writable (Read-only "
                        "file system): the run writes there; fix its permissions or mount, or choose another "
                        "output_dir")
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics_before


# ----------------------------------------------------------------------------- the signal rules, in-process
def test_stop_signals_record_and_hand_usr2_on_only_when_a_requeue_is_asked():
    from dinotrain.train.preemption import CODES, StopSignals

    calls = []
    stops = StopSignals()
    before = signal.getsignal(signal.SIGTERM)
    stops.install()  # real handlers in this (main) thread, real signals
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops.received == {signal.SIGTERM} and stops.local_code() == CODES[signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGINT)
        assert stops.local_code() == CODES[signal.SIGTERM]  # the higher code wins
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C
    finally:
        stops.restore()
    assert signal.getsignal(signal.SIGTERM) == before
    stops.previous[signal.SIGUSR2] = lambda signum, frame: calls.append(signum)  # a handler before ours (submitit)
    stops.hand_over(CODES[signal.SIGINT], wait_s=30)  # Ctrl-C: no requeue, no wait
    t0 = time.monotonic()
    stops.hand_over(CODES[signal.SIGTERM], wait_s=0.5)  # SIGTERM waits for a USR2 that does not come
    assert calls == [] and 0.5 <= time.monotonic() - t0 < 5
    stops.hand_over(CODES[signal.SIGUSR2], wait_s=30)  # another rank got USR2: requeue
    assert calls == [signal.SIGUSR2]
    stops.previous[signal.SIGUSR2] = signal.SIG_DFL  # outside submitit: nothing to hand on
    stops.hand_over(CODES[signal.SIGUSR2], wait_s=30)
    assert calls == [signal.SIGUSR2]
