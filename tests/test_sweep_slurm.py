"""`dinotrain sweep` end to end on the real local SLURM: a 2 x 2 (diversity x size) job array of the
tiny trainer with evaluation, status, idempotent re-submission, and the scaling report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dinotrain.cli import main as cli_main
from launch.jobs import queue, runstate, status
from launch.sweeps.report import write_report
from launch.sweeps.sweep import load_sweep, run_dirs
from launch.sweeps.sweep_run import plan_and_submit
from tests.services import wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _queued(job_ids: list[str]) -> list[str]:
    states = queue.squeue_states()
    return [j for j in job_ids if queue.queue_state(j, "slurm", states) is not None]


@pytest.fixture(scope="module")
def modality_folders(request, tmp_path_factory) -> dict[str, Path]:
    """Shards of chest X-ray, ultrasound and MRI: the shared fixture when present, else our own small build."""
    try:
        return {k: Path(v) for k, v in request.getfixturevalue("mixed_shards").items()}
    except pytest.FixtureLookupError:
        from shards.build import build_shards

        data = request.getfixturevalue("test_data")
        root = tmp_path_factory.mktemp("shards")
        picks = {"cxr": sorted((data / "jsrt" / "images").glob("*.png"))[:24],
                 "us": sorted((data / "busi_ultrasound" / "images").glob("*.png"))[:8],
                 "mri": sorted((data / "brain_mri" / "images").glob("*.jpg"))[:8]}
        for name, files in picks.items():
            build_shards([str(f) for f in files], str(root / name), name=name, size=64, workers=1, progress=False)
        return {name: root / name for name in picks}


def _logs(sweep_dir: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(sweep_dir.glob("jobs/*/*_0_log.err")))


def test_smoke_sweep_runs_as_array_and_reports(slurm_cluster, modality_folders, test_data, tmp_path, capsys):
    out = tmp_path / "smoke"
    spec = load_sweep(REPO / "configs/sweeps/smoke.yaml", [
        *(f"sources.{k}={v}" for k, v in modality_folders.items()), f"output_dir={out}",
        "launch.run_eval=true", "eval.tasks=[jsrt_nodule]", f"eval.data_root={test_data}", "eval.resolution=56",
        "eval.max_samples=40", "eval.bootstrap=20", "eval.batch_size=20", "eval.device=cpu"])
    plan = plan_and_submit(spec)
    assert len(plan.submit) == 4 and not plan.skip
    jobs = {d.name: runstate.read_submission(d)["job_id"] for d in run_dirs(out)}
    assert len({j.split("_")[0] for j in jobs.values()}) == 1, jobs  # one array ...
    assert sorted(j.split("_")[1] for j in jobs.values()) == ["0", "1", "2", "3"]  # ... of 4 elements
    assert "#SBATCH --array=0-3%4" in next(out.glob("jobs/*/*_submission.sh")).read_text()
    # submitted again while queued or running: nothing is submitted twice
    assert plan_and_submit(spec, dry_run=True).submit == []

    final = status.wait_for(run_dirs(out), timeout_s=600, poll_s=2)
    assert [s.state for s in final] == ["done"] * 4, f"{final}\n{_logs(out)}"
    assert cli_main(["sweep", "status", str(out)]) == 0
    assert "total: done 4" in capsys.readouterr().out
    for d in run_dirs(out):
        assert (d / "config.yaml").is_file() and (d / "eval" / "results.json").is_file()
        assert [json.loads(ln)["step"] for ln in (d / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    # finished runs are skipped; a run that died without finishing is resubmitted
    assert plan_and_submit(spec, dry_run=True).submit == []
    # a task writes 'done' a moment before its job leaves the queue, and a queued job is never
    # resubmitted: wait for the queue to empty before faking the death
    job_ids = [str(runstate.read_submission(d)["job_id"]) for d in run_dirs(out)]
    wait_until(lambda: not _queued(job_ids), 120, f"jobs {job_ids} to leave the queue")
    (out / "runs" / "cxr-n8" / runstate.STATUS).unlink()
    again = plan_and_submit(spec, dry_run=True)
    assert again.submit == ["cxr-n8"] and set(again.skip.values()) == {"done"}

    paths = write_report(out, metric="jsrt_nodule/linear/auroc")
    rows = list(csv.DictReader(paths["csv"].open()))
    auroc = {(r["diversity"], r["n_images"]): float(r["value"]) for r in rows if r["metric"] == "linear/auroc"}
    assert set(auroc) == {("cxr", "8"), ("cxr", "24"), ("cxr+us+mri", "8"), ("cxr+us+mri", "24")}
    assert all(0.0 <= v <= 1.0 for v in auroc.values())
    md = paths["md"].read_text()
    assert "## jsrt_nodule/linear/auroc by training images" in md
    # two sizes: the points are reported, a power law is not fitted through them
    for series in ("cxr", "cxr+us+mri"):
        assert f"| jsrt_nodule/linear/auroc | {series} | 2 | no fit (2 sizes) |" in md
    # without --metric the report's metric is the evaluation, not the training loss
    assert write_report(out)["md"].read_text().count("## jsrt_nodule/linear/auroc by training images") == 1
    assert paths["png"].stat().st_size > 10_000
