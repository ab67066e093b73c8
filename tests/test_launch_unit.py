"""Launch and sweep logic that needs no cluster: sbatch script, env hygiene, sweep expansion, fits, report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from dinotrain.cli import main as cli_main
from dinotrain.config import ConfigError, load_config
from launch.jobs import executor, runstate
from launch.sweeps import report, scaling, sweep

REPO = Path(__file__).resolve().parents[1]
# a few-step run needs warm-ups that fit in it (the config refuses longer ones)
NO_WARMUP = ["optim.warmup_steps=0", "ssl.warmup_teacher_temp_steps=0", "optim.freeze_last_layer_steps=0"]


def test_dry_run_prints_sbatch_for_4_nodes_x_8_gpus(capsys, tmp_path):
    rc = cli_main(["launch", str(REPO / "configs/pretrain/vitb14_cxr.yaml"), f"output_dir={tmp_path}/run",
                   "launch.nodes=4", "launch.tasks_per_node=8", "launch.gpus_per_node=8", "launch.cpus_per_task=10",
                   "launch.partition=gpu", "launch.time_minutes=600", "launch.signal_delay_s=300",
                   "launch.additional_parameters.mail-type=END", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    script = out.split("# resolved config")[0]
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --partition=gpu", "#SBATCH --time=600",
                 "#SBATCH --signal=USR2@300", "#SBATCH --mail-type=END", "#SBATCH --job-name=run"):
        assert line in script.splitlines(), f"{line!r} missing from\n{script}"
    assert f"#SBATCH --output={tmp_path}/run/jobs/%j/%j_0_log.out" in script
    assert "srun" in script and "submitit.core._submit" in script
    # the resolved config follows, with the absolute run dir
    assert f"output_dir: {tmp_path}/run" in out and "nodes: 4" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_sbatch_array_uses_parallelism_and_per_element_logs(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "launch.array_parallelism=3"])
    text = executor.sbatch_script(cfg, array_size=10)
    assert "#SBATCH --array=0-9%3" in text
    assert "%A_%a_0_log.out" in text


def test_submitting_from_a_job_hides_its_slurm_variables(monkeypatch):
    inherited = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "16", "SLURM_JOB_NODELIST": "gpu[1-4]",
                 "SRUN_DEBUG": "3", "SBATCH_PARTITION": "big", "SUBMITIT_EXECUTOR": "slurm", "RANK": "5",
                 "WORLD_SIZE": "16", "MASTER_ADDR": "gpu1", "MASTER_PORT": "29500", "LOCAL_RANK": "1"}
    for k, v in inherited.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLURM_CONF", "/etc/site/slurm.conf")
    import os

    with executor.clean_submit_env():
        seen = dict(os.environ)
    assert not set(inherited) & set(seen)
    assert seen["SLURM_CONF"] == "/etc/site/slurm.conf"  # the site config is kept: sbatch needs it
    assert all(os.environ[k] == v for k, v in inherited.items())  # restored afterwards


def test_each_task_keeps_its_own_gpu():
    from launch.jobs.task import own_gpu

    assert [own_gpu("4,5,6,7", r) for r in range(4)] == ["4", "5", "6", "7"]  # node shared with others
    assert own_gpu("2", 3) == "2"      # SLURM bound one GPU per task already
    assert own_gpu(None, 1) == "1"     # nothing set: the local rank is the device


def test_local_cluster_refuses_several_nodes(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "launch.cluster=local", "launch.nodes=2"])
    with pytest.raises(ConfigError, match="launch.nodes"):
        executor.make_executor(cfg)


# ----------------------------------------------------------------------------- sweep expansion
def test_allocate_splits_counts_by_source_size_and_caps():
    assert sweep.allocate(100, [300, 100]) == [75, 25]
    assert sweep.allocate(10, [1, 1, 1000]) == [None, None, 8]     # each source keeps one image
    assert sweep.allocate(5000, [300, 100]) == [None, None]          # more than exists: everything
    assert sweep.allocate(7, [None, 50]) == [4, 3]                    # unknown sizes: equal shares
    assert sweep.allocate(999, [333, 333, 334]) == [None, None, 333]
    assert sweep.allocate(2, [1, 1, 1000]) == [0, 0, 2]               # fewer images than sources


def _write_manifest(folder: Path, train: int, val: int = 3) -> Path:
    folder.mkdir(parents=True)
    shards = [{"path": "x-train-000000.tar", "split": "train", "samples": train, "bytes": 1, "sha256": ""},
              {"path": "x-val-000000.tar", "split": "val", "samples": val, "bytes": 1, "sha256": ""}]
    (folder / "manifest.json").write_text(json.dumps({"shards": shards}))
    return folder


def test_sweep_expands_diversity_x_sizes_x_grid_and_zip(tmp_path):
    a = _write_manifest(tmp_path / "a", 60)
    b = _write_manifest(tmp_path / "b", 20)
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(f"""
name: t
base: {REPO}/configs/pretrain/tiny_cpu.yaml
output_dir: {tmp_path}/out
sources: {{a: {a}, b: {{path: {b}, weight: 2.0}}}}
diversity: {{a: [a], ab: [a, b]}}
sizes: [40, 0.5, all]
models: [vit_tiny, vit_small]
zip: {{train.max_steps: [3, 6], optim.warmup_steps: [1, 2]}}
overrides: {{train.checkpoint_every: 2, ssl.warmup_teacher_temp_steps: 1, optim.freeze_last_layer_steps: 1}}
""")
    spec = sweep.load_sweep(spec_file, ["launch.cpus_per_task=1", "sizes=[40,0.5,all]"])
    runs = sweep.expand(spec)
    assert len(runs) == 2 * 3 * 2 * 2
    by = {r.name: r for r in runs}
    r = by["ab-n40-archvit_tiny-max_steps3-warmup_steps1"]
    assert [s["max_samples"] for s in r.sources] == [30, 10] and r.n_images == 40  # 3:1 like the sources
    assert by["a-nf0.5-archvit_small-max_steps6-warmup_steps2"].n_images == 30
    assert by["ab-nall-archvit_tiny-max_steps3-warmup_steps1"].n_images == 80
    cfg = sweep.run_config(spec, r)
    assert cfg.output_dir == f"{tmp_path}/out/runs/{r.name}"
    assert [s.name for s in cfg.data.sources] == ["a", "b"] and cfg.data.sources[1].weight == 2.0
    assert cfg.train.max_steps == 3 and cfg.optim.warmup_steps == 1 and cfg.model.arch == "vit_tiny"
    assert cfg.train.checkpoint_every == 2 and cfg.launch.cpus_per_task == 1


def test_sweep_errors_name_the_key(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(f"base: {REPO}/configs/pretrain/tiny_cpu.yaml\nsources: {{a: /x}}\ndiversity: {{d: [a, zz]}}\n")
    with pytest.raises(ConfigError, match="diversity.d: unknown source 'zz'"):
        sweep.expand(sweep.load_sweep(f))
    f.write_text(f"base: {REPO}/configs/pretrain/tiny_cpu.yaml\nsizez: [1]\n")
    with pytest.raises(ConfigError, match="unknown sweep key 'sizez'"):
        sweep.load_sweep(f)
    f.write_text(f"base: {REPO}/configs/pretrain/tiny_cpu.yaml\nsources: {{a: /x}}\nsizes: [2.5]\n")
    with pytest.raises(ConfigError, match="sizes: invalid entry 2.5"):
        sweep.expand(sweep.load_sweep(f))
    f.write_text(f"base: {REPO}/configs/pretrain/tiny_cpu.yaml\ngrid: {{optim.lrr: [1]}}\n")
    with pytest.raises(ConfigError, match="optim.lrr"):
        spec = sweep.load_sweep(f)
        sweep.run_config(spec, sweep.expand(spec)[0])


@pytest.mark.parametrize("body, message", [
    # a typo key
    ("diversty: {d: [a]}", r"s.yaml: unknown sweep key 'diversty': allowed keys are name, base, output_dir"),
    ("report: {metrik: a/b}", r"s.yaml: unknown sweep key 'report.metrik': allowed keys are metric, form$"),
    ("sources: {a: {path: /x, wieght: 2}}", r"sweep sources.a: invalid entry 'wieght'.*a mapping of path, weight"),
    # a wrong type
    ("sizes: 100", r"invalid value for 'sizes': .*: write a list of counts"),
    ("steps: [ten]", r"invalid value for 'steps\[0\]': .*'ten'.*: write a list of train.max_steps values"),
    ("diversity: {d: a}", r"invalid value for 'diversity.d': .*: write named lists of sources"),
    ("sources: [a, b]", r"invalid value for 'sources': write named shard sets"),
    ("report: power", r"invalid value for 'report': .*: write \{metric: task/metric"),
    ("report: {form: linear}", r"invalid value for 'report.form': 'linear': write .*one of power, saturating"),
])
def test_sweep_schema_names_the_key_and_the_fix(tmp_path, body, message):
    f = tmp_path / "s.yaml"
    f.write_text(f"base: {REPO}/configs/pretrain/tiny_cpu.yaml\n{body}\n")
    with pytest.raises(ConfigError, match=message) as e:
        sweep.expand(sweep.load_sweep(f))
    assert "\n" not in str(e.value)


def test_sweep_override_of_a_wrong_type_names_the_override():
    with pytest.raises(ConfigError, match=r"override 'sizes=3': invalid value for 'sizes'"):
        sweep.load_sweep(REPO / "configs/sweeps/smoke.yaml", ["sizes=3"])


def test_sweep_source_mapping_keeps_only_what_it_sets(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(f"base: {REPO}/configs/pretrain/tiny_cpu.yaml\nsources: {{a: /x, b: {{path: /y, selection: sel.json}}}}\n")
    spec = sweep.load_sweep(f)
    assert spec.report.form == "power" and list(spec.sizes) == []
    assert sweep._sources(spec) == {"a": {"path": "/x", "name": "a"},
                                    "b": {"path": "/y", "selection": str((Path.cwd() / "sel.json").absolute()),
                                          "name": "b"}}


def test_shipped_sweeps_expand_and_dry_run_writes_nothing(tmp_path):
    from launch.sweeps.sweep_run import plan_and_submit

    spec = sweep.load_sweep(REPO / "configs/sweeps/data_scaling.yaml", [f"output_dir={tmp_path}/ds"])
    runs = sweep.expand(spec)
    assert len(runs) == 4 * 5
    cfg = sweep.run_config(spec, runs[-1])
    assert cfg.launch.nodes == 4 and cfg.launch.gpus_per_node == 4 and cfg.model.arch == "vit_base"
    smoke = sweep.load_sweep(REPO / "configs/sweeps/smoke.yaml", [f"output_dir={tmp_path}/sm"])
    plan = plan_and_submit(smoke, dry_run=True)
    assert len(plan.submit) == 4 and not (tmp_path / "sm").exists()
    assert "#SBATCH --array=0-3%4" in plan.script and "#SBATCH --job-name=smoke" in plan.script
    assert {r.axes["diversity"] for r in sweep.expand(smoke)} == {"cxr", "cxr+us+mri"}


# ----------------------------------------------------------------------------- fits
def test_power_law_fit_recovers_exponent_with_errors():
    rng = np.random.default_rng(0)
    n = np.geomspace(100, 100_000, 8)
    y = 0.42 * n**0.13 * (1 + rng.normal(0, 0.01, n.size))
    fit = scaling.fit_power_law(n, y)
    assert abs(fit.exponent - 0.13) < 3 * fit.stderr["b"] + 1e-3
    assert 0 < fit.stderr["b"] < 0.01 and fit.r2 > 0.99
    assert abs(fit.params["a"] - 0.42) / 0.42 < 0.1
    three = scaling.fit_power_law([10, 100, 1000], [2 * 10**-0.5, 2 * 100**-0.5, 2 * 1000**-0.5])
    assert three.exponent == pytest.approx(-0.5, abs=1e-6) and three.stderr["b"] < 1e-6


def test_two_sizes_give_no_fit_and_say_why():
    # a power law passes exactly through any 2 points: such a "fit" would claim R² = 1 from nothing
    with pytest.raises(ValueError, match="too few sizes for a power fit: 2 distinct, it needs >= 3"):
        scaling.fit_power_law([10, 1000, 1000], [0.6, 0.7, 0.71])


def test_saturating_fit_recovers_ceiling_and_exponent():
    n = np.geomspace(50, 500_000, 10)
    y = 0.95 - 0.6 * n**-0.35
    fit = scaling.fit_power_law(n, y, form="saturating")
    assert fit.params["c"] == pytest.approx(0.95, abs=1e-4)
    assert fit.exponent == pytest.approx(0.35, abs=1e-3)
    with pytest.raises(ValueError, match="too few sizes for a saturating fit: 3 distinct, it needs >= 4"):
        scaling.fit_power_law(n[:3], y[:3], form="saturating")


# ----------------------------------------------------------------------------- report
def _fake_sweep(tmp_path: Path) -> Path:
    """Run folders as a finished sweep leaves them, with results in `dinotrain eval`'s format."""
    root = tmp_path / "sw"
    for div, a, b in (("cxr", 0.5, 0.05), ("all", 0.55, 0.04)):
        for n in (10, 100, 1000):
            name = f"{div}-n{n}"
            d = root / "runs" / name
            sweep.write_run_record(d, sweep.RunSpec(name, {"diversity": div, "size": str(n)}, [], n_images=n))
            auroc = a * n**b
            (d / "eval").mkdir()
            (d / "eval" / "results.json").write_text(json.dumps({"models": [str(d)], "results": [
                {"model": str(d), "task": "jsrt_nodule", "kind": "linear", "metric": "auroc", "split": "test",
                 "value": auroc, "ci_low": auroc - 0.02, "ci_high": auroc + 0.02, "n": 50},
                {"model": str(d), "task": "jsrt_nodule", "kind": "knn", "metric": "auroc", "split": "test",
                 "value": None, "ci_low": None, "ci_high": None, "n": 50}]}))
            (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "total_loss": 5.0 / s}) + "\n"
                                                     for s in range(1, 5)))
            runstate.write_status(d, "done")
    return root


def test_report_writes_csv_png_md_with_fits(tmp_path):
    root = _fake_sweep(tmp_path)
    out = report.write_report(root, metric="jsrt_nodule/linear/auroc")
    rows = list(csv.DictReader(out["csv"].open()))
    assert len(rows) == 6 * 2  # linear AUROC (the null knn value is dropped) + final training loss per run
    lin = [r for r in rows if r["metric"] == "linear/auroc"]
    assert {r["state"] for r in lin} == {"done"} and {r["n_images"] for r in lin} == {"10", "100", "1000"}
    md = out["md"].read_text()
    assert "| jsrt_nodule/linear/auroc | cxr | 3 |" in md and "0.05" in md
    assert "| jsrt_nodule/linear/auroc | all | 3 |" in md and "0.04" in md
    assert out["png"].stat().st_size > 10_000
    from PIL import Image

    assert Image.open(out["png"]).size[0] > 500
    fits = report.fit_all(report.collect(root), "power")
    assert fits[("jsrt_nodule/linear/auroc", "cxr")].exponent == pytest.approx(0.05, abs=1e-6)
    assert fits[("jsrt_nodule/linear/auroc", "all")].exponent == pytest.approx(0.04, abs=1e-6)
    # training loss averaged over the last lines: mean(5/1, 5/2, 5/3, 5/4)
    loss = [r for r in rows if r["task"] == "train"][0]
    assert float(loss["value"]) == pytest.approx((5 + 2.5 + 5 / 3 + 1.25) / 4)


def test_report_with_two_sizes_tabulates_points_and_fits_nothing(tmp_path):
    root = _fake_sweep(tmp_path)
    for d in root.glob("runs/*-n1000"):
        for f in sorted(d.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        d.rmdir()
    out = report.write_report(root)
    md = out["md"].read_text()
    assert "| jsrt_nodule/linear/auroc | cxr | 2 | no fit (2 sizes) |" in md
    assert "b = " not in md and all(isinstance(f, report.NoFit) for f in report.fit_all(report.collect(root),
                                                                                          "power").values())


def test_report_fits_one_metric_by_the_studys_rule_and_never_noise(tmp_path):
    """Issue 22: 22 fit rows, 'y = 0.6 · n^0' with R² 0.98 while each point's CI was ±0.15. Now only
    the report's metric is fitted, by the study's rule (`no_fit_reason`, one function for both)."""
    import launch.study.study_report

    assert report.no_fit_reason is scaling.no_fit_reason
    assert "def no_fit_reason" not in Path(launch.study.study_report.__file__).read_text()
    root = _fake_sweep(tmp_path)
    for d in sorted(root.glob("runs/cxr-n*")):  # a flat trend inside wide CIs: noise, not a law
        res = json.loads((d / "eval" / "results.json").read_text())
        n = int(d.name.split("-n")[1])
        v = 0.6 + 0.01 * math.log10(n)
        res["results"][0].update(value=v, ci_low=v - 0.15, ci_high=v + 0.15)
        (d / "eval" / "results.json").write_text(json.dumps(res))
    rows = report.collect(root)
    fits = report.fit_all(rows, "power")
    assert set(fits) == {("jsrt_nodule/linear/auroc", "cxr"), ("jsrt_nodule/linear/auroc", "all")}  # no loss rows
    assert fits[("jsrt_nodule/linear/auroc", "cxr")] == report.NoFit("CIs overlap", 3)
    assert fits[("jsrt_nodule/linear/auroc", "all")].exponent == pytest.approx(0.04, abs=1e-6)
    md = report.write_report(root)["md"].read_text()
    assert "| jsrt_nodule/linear/auroc | cxr | 3 | no fit (CIs overlap) | | |" in md
    assert "train/" not in md.split("## Fits")[1]
    # the training loss, asked for by name, has no CIs: tabulated, never fitted
    md = report.write_report(root, metric="train/total_loss")["md"].read_text()
    assert "| train/total_loss | cxr | 3 | no fit (no CIs) | | |" in md and "b = " not in md


def test_default_metric_is_the_runs_evaluation_not_a_baseline_or_the_loss(tmp_path):
    def rows(*keys: str) -> list[report.Row]:
        out = []
        for key in keys:
            task, _, metric = key.partition("/")
            metric, _, split = metric.partition("@")
            out.append(report.Row("r", "done", "cxr", "10", 10.0, {}, task, metric, 0.5, split))
        return out

    loss = "train/total_loss"
    assert report.choose_metric(rows(loss, "jsrt_age/mean_baseline/mae", "jsrt_age/ridge/mae"), None) \
        == "jsrt_age/ridge/mae"
    assert report.choose_metric(rows(loss, "jsrt_seg/constant_mask/dice_lung", "jsrt_seg/linear_head/dice_lung"),
                                None) == "jsrt_seg/linear_head/dice_lung"
    assert report.choose_metric(rows(loss, "a/knn/auroc", "b/linear/auroc@val", "b/linear/auroc"), None) \
        == "b/linear/auroc"
    assert report.choose_metric(rows(loss, "jsrt_nodule/linear/auroc@val"), None) == "jsrt_nodule/linear/auroc@val"
    assert report.choose_metric(rows(loss, "train/dino_loss"), None) == loss  # no evaluation: the loss
    # an evaluation metric with CIs before one without (only one with CIs can be fitted)
    with_ci = rows("b/knn/auroc")[0]
    with_ci.ci_low, with_ci.ci_high = 0.4, 0.6
    assert report.choose_metric(rows(loss, "a/linear/auroc") + [with_ci], None) == "b/knn/auroc"
    # one evaluated run is enough for the evaluation to be the sweep's metric
    assert report.choose_metric(rows(loss) + rows("jsrt_nodule/linear/auroc"), None) == "jsrt_nodule/linear/auroc"


def test_sweep_cli_report_and_status(tmp_path, capsys):
    root = _fake_sweep(tmp_path)
    assert cli_main(["sweep", "status", str(root)]) == 0
    assert "total: done 6" in capsys.readouterr().out
    assert cli_main(["sweep", "report", str(root), "--metric", "nope/x"]) == 2
    assert "metric 'nope/x' not in the results" in capsys.readouterr().err
    assert cli_main(["sweep", "report", str(root)]) == 0
    assert (root / "report.md").exists() and (root / "scaling.png").exists()


# ----------------------------------------------------------------------------- local executors
def test_launch_debug_runs_in_process_and_marks_done(tmp_path, capsys):
    run = tmp_path / "dbg"
    rc = cli_main(["launch", "launch.cluster=debug", f"output_dir={run}", "train.max_steps=3", *NO_WARMUP, "--probe",
                   "--wait"])
    assert rc == 0 and "done" in capsys.readouterr().out
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert runstate.read_status(run)["state"] == "done" and runstate.read_submission(run)["cluster"] == "debug"


def test_launch_local_runs_in_a_subprocess_and_failures_are_recorded(tmp_path, capsys):
    from launch.jobs import status
    from launch.jobs.submit import submit_run

    run = tmp_path / "loc"
    rc = cli_main(["launch", "launch.cluster=local", f"output_dir={run}", "train.max_steps=2", *NO_WARMUP, "--probe",
                   "--wait"])
    assert rc == 0, capsys.readouterr()
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(d["step"], d["world_size"]) for d in lines] == [(1, 1), (2, 1)]
    # a task that raises leaves 'failed' with the error, and the status says so
    bad = tmp_path / "bad"
    submit_run(load_config(None, [f"output_dir={bad}", "launch.cluster=local"]), entry="launch.jobs.probe:no_such_entry")
    (final,) = status.wait_for([bad], timeout_s=60, poll_s=0.5)
    assert final.state == "failed" and "no_such_entry" in final.detail


def test_eval_without_data_root_fails_at_submission(tmp_path):
    from launch.jobs.submit import submit_run

    cfg = load_config(None, [f"output_dir={tmp_path}/r", "launch.cluster=debug", "eval.tasks=[jsrt_nodule]"])
    with pytest.raises(ConfigError, match="eval.data_root"):
        submit_run(cfg)
    assert not (tmp_path / "r" / "job.json").exists()


def _raise_like_dcp(cfg) -> None:
    from torch.distributed.checkpoint.api import CheckpointException

    raise CheckpointException("load", {0: (RuntimeError("Missing key in checkpoint state_dict"), None)})


def test_task_records_failures_that_are_base_exceptions(tmp_path):
    """torch's CheckpointException derives from BaseException: it must still mark the run failed."""
    from launch.jobs.task import TrainTask

    cfg = load_config(None, [f"output_dir={tmp_path}", "launch.cluster=debug"])
    with pytest.raises(BaseException, match="Missing key"):
        TrainTask(cfg, entry=f"{__name__}:_raise_like_dcp")()
    st = runstate.read_status(tmp_path)
    assert st["state"] == "failed" and "CheckpointException" in st["error"]


def test_parse_results_reads_what_dinotrain_eval_writes(tmp_path):
    from dinotrain.eval.report import write_json
    from launch.sweeps.report import parse_results

    records = [{"model": "m", "task": "jsrt_nodule", "kind": "linear", "metric": "auroc", "split": "test",
                "value": 0.91, "ci_low": 0.85, "ci_high": 0.96, "n": 50},
               {"model": "m", "task": "jsrt_nodule", "kind": "knn", "metric": "auroc", "split": "test",
                "value": 0.8, "ci_low": float("nan"), "ci_high": float("nan"), "n": 50},
               {"model": "m", "task": "jsrt_age", "kind": "ridge", "metric": "r2", "split": "test",
                "value": float("nan"), "ci_low": None, "ci_high": None, "n": 50}]
    path = write_json(tmp_path, ["m"], ["jsrt_nodule", "jsrt_age"], records, {"resolution": 518})
    rows = parse_results(json.loads(path.read_text()))
    assert rows == [
        {"task": "jsrt_nodule", "metric": "linear/auroc", "value": 0.91, "split": "test", "ci_low": 0.85,
         "ci_high": 0.96},
        {"task": "jsrt_nodule", "metric": "knn/auroc", "value": 0.8, "split": "test", "ci_low": None,
         "ci_high": None},
    ]  # the NaN value (written as null) is left out, NaN CIs become None
    for other in ([], {"jsrt": {"auroc": 0.9}}, {"results": {"a": 1}}):
        with pytest.raises(ValueError, match="results.json"):
            parse_results(other)
