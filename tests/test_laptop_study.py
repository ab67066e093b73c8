"""The laptop study (issue 14): held-out rule, paired CIs, the random-init baseline, claims, and the
real script end to end in its shrunk mode on the real local SLURM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from dinotrain.eval.specs import load_spec, load_task
from dinotrain.eval.tasks import EvalSettings, Scored
from launch.study import study_data
from launch.study.study_report import claims

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- held out
def test_held_out_listing_excludes_test_images_and_their_patients(test_data):
    tasks = ["jsrt_sex", "jsrt_nodule", "covid_sex", "covid_lungs", "ham10000", "ham10000_large_sex", "brain_mri"]
    hold = study_data.held_out(tasks, test_data, None)
    tests = {t: load_task(load_spec(t), test_data) for t in tasks}
    expected = {str(Path(td.images[i]).resolve()) for td in tests.values() for i in td.indices("test")}
    assert hold.images == expected and len(expected) > 100
    test_patients = {r["patient_id"] for t in ("covid_sex", "covid_lungs")
                     for r in (tests[t].rows[i] for i in tests[t].indices("test"))}
    for group in ("cxr", "ct", "derm", "mri"):
        rows = study_data.group_listing(group, test_data, hold)
        paths = {r["path"] for r in rows}
        assert not paths & hold.images
        assert not any("/masks" in p for p in paths)  # image files of metadata.csv only
        if group in ("cxr", "ct"):
            covid = [r for r in rows if r["dataset"] == "covid_cxr"]
            assert covid and not {r["patient_id"] for r in covid} & test_patients
    cxr = study_data.group_listing("cxr", test_data, hold)
    jsrt_test = {p for p in expected if "/jsrt/" in p}
    assert sum(r["dataset"] == "jsrt" for r in cxr) == 247 - len(jsrt_test)  # JSRT: one image per patient

    def column(dataset, key, col):  # metadata column by image path, for the pool's rows
        with (test_data / dataset / "metadata.csv").open() as f:
            import csv

            return {str((test_data / dataset / r["path"]).resolve()): r[col] for r in csv.DictReader(f)}

    # derm is ham10000_large: no lesion of a HAM test image (ham10000_large_sex's split) and no source file of
    # the small ham10000 task's test images (the same files under ham10000_derm) is in the pool
    derm = study_data.group_listing("derm", test_data, hold)
    lesion = column("ham10000_large", "path", "lesion_id")
    sex = tests["ham10000_large_sex"]
    test_lesions = {sex.rows[i]["lesion_id"] for i in sex.indices("test")}
    assert derm and not {lesion[r["path"]] for r in derm} & test_lesions
    small = tests["ham10000"]
    small_sources = {small.rows[i]["source_path"] for i in small.indices("test")}
    src = column("ham10000_large", "path", "source_path")
    assert small_sources and not {src[r["path"]] for r in derm} & small_sources
    # mri is brain_mri_large: no near-duplicate series (group_id) of a brain_mri test image is in the pool
    mri = study_data.group_listing("mri", test_data, hold)
    gid = column("brain_mri_large", "path", "group_id")
    bm = tests["brain_mri"]
    test_groups = {bm.rows[i]["group_id"] for i in bm.indices("test")}
    assert mri and test_groups and not {gid[r["path"]] for r in mri} & test_groups
    assert {r["modality"] for r in study_data.group_listing("ct", test_data, hold)} == {"CT"}


def test_the_three_ham10000_large_tasks_share_one_test_set(test_data):
    """split_like: the sex and age tasks take each lesion's split from ham10000_large, so the study holds
    out one test set (their own stratified splits would put other lesions in test: ~2,900 held out)."""
    main = load_task(load_spec("ham10000_large"), test_data)
    by_lesion = dict(zip(main.groups.tolist(), main.split.tolist()))
    for name in ("ham10000_large_sex", "ham10000_large_age"):
        t = load_task(load_spec(name), test_data)
        assert [by_lesion[g] for g in t.groups.tolist()] == t.split.tolist()
        assert len(t.indices("test")) > 1100
    from dinotrain.eval.specs import SpecError, spec_from_dict

    with pytest.raises(SpecError, match="split_like needs group_column"):
        spec_from_dict({"dataset": "ham10000_large", "split_like": "ham10000_large"})
    bad = spec_from_dict({"dataset": "jsrt", "group_column": "patient_id", "split_like": "ham10000_large"})
    with pytest.raises(SpecError, match="must be a task on the same dataset"):
        load_task(bad, test_data)


def test_the_val_split_scores_val_and_never_reads_a_test_image(test_data, tmp_path):
    """eval.split=val (decisions such as the study's budget): the test rows are dropped before any image
    is read, val is what is scored, and a fifth of train's groups stand in for val in the probes' choices."""
    from dinotrain.eval.run import evaluate_models
    from dinotrain.eval.scored import as_validation

    task = load_task(load_spec("jsrt_sex"), test_data)
    v = as_validation(task)
    test_keys = {task.keys[i] for i in task.indices("test")}
    assert not test_keys & set(v.keys) and len(v.keys) == len(task.keys) - len(test_keys)
    assert sorted(v.keys[i] for i in v.indices("test")) == sorted(task.keys[i] for i in task.indices("val"))
    train_groups = set(task.groups[task.indices("train")].tolist())
    stand_in = set(v.groups[v.indices("val")].tolist())
    assert stand_in and stand_in < train_groups and not stand_in & set(v.groups[v.indices("train")].tolist())
    assert 0.1 < len(stand_in) / len(train_groups) < 0.3

    res = evaluate_models(["random:vit_tiny"], "jsrt_sex", test_data, tmp_path / "e", resolution=28, bootstrap=20,
                          split="val", with_plot=False)
    assert {r["split"] for r in res["records"]} == {"val"}
    assert {r["n"] for r in res["records"] if r["kind"] == "linear"} == {len(task.indices("val"))}
    assert "Validation split (test not read)" in (tmp_path / "e" / "results.md").read_text()
    cached = {p.name for p in (tmp_path / "e" / "cache").rglob("*.safetensors")}
    assert len(cached) == len(v.keys)  # only the images of train and val were read


# ----------------------------------------------------------------------------- paired CIs
def test_paired_differences_use_the_same_resamples_for_both_models():
    from dinotrain.eval.run import paired_differences

    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    noise = rng.normal(scale=5.0, size=200)  # large per-item noise shared by both models

    def scored(model, offset):
        return Scored(model, "t", "linear", "auroc", lambda i, o=offset: float(np.mean(x[i] + noise[i] + o)), 200)

    out = paired_differences([scored("ssl", 0.3), scored("rand", 0.0)], "rand", EvalSettings(bootstrap=200))
    (p,) = out
    assert p["model"] == "ssl" and p["reference"] == "rand" and p["n"] == 200
    assert p["delta"] == pytest.approx(0.3)
    # the shared noise cancels in a paired resample: the CI is the offset itself
    assert p["ci_low"] == pytest.approx(0.3) and p["ci_high"] == pytest.approx(0.3)


def test_compare_to_must_name_one_of_the_models(test_data, tmp_path):
    from dinotrain.eval.run import evaluate_models
    from dinotrain.eval.specs import SpecError

    with pytest.raises(SpecError, match="compare_to 'random:vit_small' is not one of the models"):
        evaluate_models(["random:vit_tiny"], "jsrt_sex", test_data, tmp_path, compare_to="random:vit_small")


def test_dry_run_warns_when_the_budget_cannot_hold_the_study(test_data, tmp_path, capsys):
    from dinotrain.cli import main as cli_main

    assert cli_main(["study", str(tmp_path / "s"), "--data", str(test_data), "--dry-run", "--minutes", "5"]) == 0
    err = capsys.readouterr().err
    assert "warning: the estimate is over --minutes 5 (1 step(s) per run)" in err
    assert "cluster local: " in err or "cluster slurm: a SLURM controller answers squeue" in err  # and says why
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


def test_seeds_table_says_when_both_age_probes_predicted_the_mean(tmp_path):
    from launch.study.study_report import combine

    mean = {"alpha": None, "mean_predictor": True, "chosen_by": "cv"}
    for seed, probe_random in ((0, mean), (1, {"alpha": 10.0, "mean_predictor": False, "chosen_by": "cv"})):
        age = {**_row(0.0 if seed == 0 else -0.02, 0.0 if seed == 0 else -0.05, 0.0 if seed == 0 else 0.01),
               "metric": "ridge/r2", "probe": {"ssl": mean, "random": probe_random}}
        study = {"seed": seed, "tasks": {"x_age": age, "t": _row(0.1, 0.02, 0.2)}, "continual": {}, "scaling": []}
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "study.json").write_text(json.dumps(study))
    combine([tmp_path / "s0", tmp_path / "s1"], tmp_path / "out")
    table = (tmp_path / "out" / "seeds.md").read_text()
    assert "| x_age | ridge/r2 | 0 (both: training mean) | -0.020 [-0.050, 0.010] | no |" in table
    assert "chose to predict the training mean for both models" in table


def test_combine_names_a_folder_without_study_json(tmp_path, capsys):
    from dinotrain.cli import main as cli_main

    assert cli_main(["study", "--combine", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope/study.json not found" in err


# ----------------------------------------------------------------------------- random init
def test_initial_teacher_is_the_recipes_init_and_loads_in_eval(tmp_path):
    import torch

    from dinotrain.config import load_config
    from dinotrain.eval.loading import load_model
    from dinotrain.train.initial import save_initial_teacher

    over = ["model.layerscale_init=0.1", "train.seed=3"]
    cfg = load_config(REPO / "configs/pretrain/tiny_cpu.yaml", over)
    a = load_model(str(save_initial_teacher(cfg, tmp_path / "a")))
    b = load_model(str(save_initial_teacher(cfg, tmp_path / "b")))
    c = load_model(str(save_initial_teacher(load_config(REPO / "configs/pretrain/tiny_cpu.yaml",
                                                        ["model.layerscale_init=0.1"]), tmp_path / "c")))
    assert a.fingerprint == b.fingerprint != c.fingerprint  # the seed decides the weights
    gammas = [v for k, v in a.model.state_dict().items() if k.endswith(("ls1.gamma", "ls2.gamma"))]
    assert gammas and all(torch.allclose(g, torch.full_like(g, 0.1)) for g in gammas)  # not the schema's 1e-5


def test_training_part_ignores_where_a_run_goes_not_what_it_learns():
    from dinotrain.config import load_config
    from launch.study.study_runs import training_part

    base = REPO / "configs/pretrain/tiny_cpu.yaml"
    a = load_config(base, ["output_dir=/x/a", "launch.cluster=local", "eval.tasks=[jsrt_sex]", "train.progress=false"])
    b = load_config(base, ["output_dir=/y/b", "launch.cluster=slurm", "launch.run_eval=false"])
    assert training_part(a) == training_part(b)
    for change in ("optim.lr=0.01", "train.seed=1", "data.seed=2", "model.pretrained=/m.safetensors", "train.max_steps=30"):
        assert training_part(load_config(base, [change])) != training_part(b), change


def test_a_run_shortened_to_fit_the_budget_gets_warm_ups_that_fit():
    from dinotrain.config import load_config
    from launch.study.plan import fitted_warmups

    recipe = REPO / "configs/pretrain/laptop_real.yaml"  # 300 steps: warm-ups 30 (lr), 100 (teacher), 30 (freeze)
    cfg = load_config(recipe)
    assert fitted_warmups(cfg, 300) == [] and fitted_warmups(cfg, 500) == []
    short = fitted_warmups(cfg, 60)  # a fifth of the recipe: each warm-up a fifth
    # in the schema's order (the keys' warm-up role is their field metadata); the config they make is what counts
    assert sorted(short) == ["optim.freeze_last_layer_steps=6", "optim.warmup_steps=6", "ssl.warmup_teacher_temp_steps=20"]
    fitted = load_config(recipe, ["train.max_steps=60", *short])  # refused without them (teacher: 100 > 60)
    assert fitted.ssl.warmup_teacher_temp_steps == 20
    with pytest.raises(Exception, match="warmup_teacher_temp_steps=100 is longer than train.max_steps=60"):
        load_config(recipe, ["train.max_steps=60"])


# ----------------------------------------------------------------------------- claims
def _row(delta, lo, hi, kind="classification"):
    return {"metric": "linear/auroc", "delta": delta, "delta_ci": [lo, hi], "kind": kind}


def test_claims_are_computed_from_the_numbers():
    tasks = {f"t{i}": _row(0.1, 0.02, 0.2) for i in range(4)}
    tasks |= {"x_sex": _row(0.1, 0.01, 0.2), "x_age": _row(0.1, 0.01, 0.2), "seg": _row(0.01, -0.01, 0.03, "segmentation")}
    scaling = [{"diversity": "cxr", "task": "t", "images": n, "value": v, "ci": [v - 0.01, v + 0.01]}
               for n, v in ((10, 0.6), (30, 0.65), (90, 0.7))]
    study = {"tasks": tasks, "continual": {"a": _row(0.05, 0.01, 0.09), "b": _row(0.0, -0.02, 0.02)},
             "scaling": scaling}
    c = claims(study)
    assert c["ssl_beats_random"]["holds"] and len(c["ssl_beats_random"]["image_tasks_ci_above_zero"]) == 6
    assert c["continual_beats_scratch"]["holds"] and c["continual_beats_scratch"]["ci_above_zero"] == ["a"]
    assert c["scaling"]["holds"] and c["scaling"]["pairs"][0]["cis_separate"]
    study["tasks"]["x_age"] = _row(0.1, -0.01, 0.2)  # the only age task's CI now includes 0
    study["continual"]["b"] = _row(-0.05, -0.09, -0.01)
    c = claims(study)
    assert not c["ssl_beats_random"]["holds"] and not c["ssl_beats_random"]["age_task"]
    assert not c["continual_beats_scratch"]["holds"]
    # more data: better point estimates alone do not make the claim; one pair must have its CIs apart
    for r in study["scaling"]:
        r["ci"] = [r["value"] - 0.1, r["value"] + 0.1]
    c = claims(study)
    assert c["scaling"]["n_largest_better"] == 1 and not c["scaling"]["holds"]
    study["scaling"] += [{"diversity": "all", "task": "t", "images": n, "value": v, "ci": [v - 0.01, v + 0.01]}
                         for n, v in ((10, 0.6), (90, 0.7))]
    study["scaling"] += [{"diversity": "cxr", "task": "u", "images": n, "value": v, "ci": [v - 0.01, v + 0.01]}
                         for n, v in ((10, 0.8), (90, 0.82))]
    assert claims(study)["scaling"]["holds"]  # 3 of 3 better, one with CIs apart
    study["scaling"][-1]["value"], study["scaling"][-1]["ci"] = 0.7, [0.69, 0.71]  # u: worse, CIs apart
    assert not claims(study)["scaling"]["holds"]


def test_limits_are_computed_from_the_study_numbers():
    from launch.study.study_markdown import limits

    tasks = {"a_sex": {**_row(0.02, -0.08, 0.12), "n_test": 50, "random": 0.70},
             "b": {**_row(0.01, -0.02, 0.04), "n_test": 150, "random": 0.80},
             "c_age": {**_row(0.0, -0.2, 0.2), "metric": "ridge/r2", "n_test": 120, "random": -0.01},
             "seg": {**_row(0.01, 0.0, 0.02, "segmentation"), "n_test": 90, "random": 0.6}}
    study = {"tasks": tasks, "plan": {"steps": 100, "batch": 32, "sizes": [50, 400]}, "minutes": 58.6,
             "runs": {"x": {"final_teacher_entropy_ratio": 0.97}, "y": {"final_teacher_entropy_ratio": 0.985}}}
    text = "\n".join(limits(study))
    assert "3 image-level tasks have 50-150 test images" in text  # the segmentation task is not one of them
    assert "is 0.030-0.200 in the task's metric (median 0.100)" in text
    assert "AUROC 0.700-0.800" in text  # ridge R² is not an AUROC
    assert "100 steps of batch 32: 3,200 images drawn, 8.0 passes over the largest set (400 images)" in text
    assert "entropy at the last step is 0.970-0.985" in text
    assert "| c_age | 120 | 0.200 | -0.010 |" in text
    del study["plan"]["batch"]  # a study written before the plan held its batch: no compute line, no guess
    assert "steps of batch" not in "\n".join(limits(study))
    assert "**Age.**" not in text  # no probe record (an older study.json): nothing said about the penalties
    at_mean = {"alpha": None, "mean_predictor": True, "chosen_by": "cv"}
    tasks["c_age"]["probe"] = {"ssl": at_mean, "random": {"alpha": 100.0, "mean_predictor": False, "chosen_by": "cv"}}
    study["continual"] = {"d_age": {**_row(0.0, 0.0, 0.0), "metric": "ridge/r2",
                                    "probe": {"from_stage1": at_mean, "from_scratch": at_mean}}}
    text = "\n".join(limits(study))
    assert ("It chose the mean for both models on d_age (from_stage1 vs from_scratch), whose R² difference is "
            "therefore 0 by construction") in text
    assert "; for one model on c_age (ssl vs random): ssl at the mean." in text and "Too few" not in text
    tasks["c_age"]["probe"]["random"] = at_mean  # both at the mean: a [0, 0] CI, left out of the widths
    assert "The 3 image-level tasks have 50-150 test images; half the width of the paired 95% CI of SSL − random is " \
        "0.030-0.100" in "\n".join(limits(study))


def test_reevaluate_refuses_to_train(tmp_path, test_data):
    """--reevaluate trains nothing: runs of the plan that are not done are named, with the fix, before
    anything is submitted (an eval that failed in its job leaves the run 'failed', not done)."""
    from launch.jobs import runstate
    from launch.study.settings import laptop
    from launch.study.study import StudyOptions, require_trained, sweep_spec

    opts = StudyOptions(out=tmp_path / "study", data_root=test_data, reevaluate=True)
    opts.out.mkdir()
    data = {"groups": {g: {"path": str(tmp_path / g)} for g in sorted({g for v in laptop().diversity.values() for g in v})}}
    spec = sweep_spec(opts, data, [6, 12], [])
    with pytest.raises(RuntimeError) as e:
        require_trained(opts, spec)
    for name in ("derm-n6", "all-n12", "ssl", "stage1", "stage2_from_stage1", "stage2_from_scratch",
                 "rerun without --reevaluate"):
        assert name in str(e.value)
    (opts.out / "runs" / "curated-n6").mkdir(parents=True)
    for d in [*(opts.out / "sweep" / "runs" / f"{v}-n{n}" for v in laptop().diversity for n in (6, 12)),
              *(opts.out / "runs" / n for n in ("ssl", "stage1", "stage2_from_stage1", "stage2_from_scratch",
                                                "curated-n6"))]:
        runstate.write_status(d, "done")
    require_trained(opts, spec)  # all done: nothing to say
    runstate.write_status(opts.out / "runs" / "stage1", "failed", error="eval crashed")
    with pytest.raises(RuntimeError, match=r"are not done: stage1 \("):
        require_trained(opts, spec)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_local_sweep_runs_one_job_after_another_and_a_rerun_skips_what_is_done(mixed_shards, tmp_path):
    """The launcher path the published study took (no SLURM controller on the machine): the sweep's
    runs as local jobs, one at a time, each to its last step; the study run again submits nothing."""
    import io

    from launch.jobs import runstate, status
    from launch.study.study_runs import LogEcho, submit_sweep
    from launch.sweeps.sweep import load_sweep

    out = tmp_path / "sweep"
    spec = load_sweep(REPO / "configs/sweeps/smoke.yaml", [
        *(f"sources.{k}={v}" for k, v in mixed_shards.items()), f"output_dir={out}", "sizes=[8]",
        "launch.cluster=local", "train.max_steps=2", "optim.warmup_steps=1", "ssl.warmup_teacher_temp_steps=2",
        "train.progress=true"])
    echo = io.StringIO()
    dirs = submit_sweep(spec, "local", LogEcho(echo))
    assert [d.name for d in dirs] == ["cxr-n8", "cxr+us+mri-n8"]
    assert [s.state for s in status.states_of(dirs)] == ["done", "done"]
    for d in dirs:
        assert [json.loads(ln)["step"] for ln in (d / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert echo.getvalue().count("2/2") >= 2  # each job's progress bar was echoed while it ran
    assert (out / "sweep.yaml").is_file()  # `dinotrain sweep status|report OUT` work on it
    jobs = [runstate.read_submission(d)["job_id"] for d in dirs]
    assert submit_sweep(spec, "local", None) == dirs
    assert [runstate.read_submission(d)["job_id"] for d in dirs] == jobs  # nothing submitted again


@pytest.mark.slow
@pytest.mark.slurm
def test_quick_study_end_to_end_through_slurm(slurm_cluster, test_data, tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, **slurm_cluster.env, "DINOTRAIN_TEST_DATA": str(test_data), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts/laptop_study.sh"), str(out), "1", "--quick"],
                          capture_output=True, text=True, env=env, timeout=850)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for phase in ("data:", "near-duplicates of the test images", "pretrain: sweep", "pretrain: the SSL run",
                  "continual stage 1", "continual stage 2", "pretrain: curated subset of 12", "eval: learning curve",
                  "eval: curated vs random", "done:"):
        assert phase in proc.stderr, phase
    assert "train:" in proc.stderr  # the trainer's own progress bar reaches the study's terminal

    study = json.loads((out / "study.json").read_text())
    assert study["seed"] == 1 and study["cluster"] == "slurm" and study["minutes"] > 0
    assert set(study["tasks"]) == {"jsrt_sex", "jsrt_anatomy"} and set(study["continual"]) == {"jsrt_sex"}
    for _name, t in study["tasks"].items():
        assert {"metric", "ssl", "random", "delta", "delta_ci", "n_test"} <= set(t)
        assert t["delta"] == pytest.approx(t["ssl"] - t["random"])
        assert t["delta_ci"][0] <= t["delta"] <= t["delta_ci"][1] and t["n_test"] > 0
    assert study["tasks"]["jsrt_anatomy"]["metric"] == "linear_head/dice_mean"
    c = study["continual"]["jsrt_sex"]
    assert {"metric", "from_stage1", "from_scratch", "delta_ci"} <= set(c)
    assert {(r["diversity"], r["images"]) for r in study["scaling"]} == {(d, n) for d in ("derm", "all") for n in (6, 12, 18)}
    assert all({"diversity", "images", "task", "value", "ci"} <= set(r) for r in study["scaling"])
    # learning curve: the SSL run's exports at every curve step, step 0 = the random init
    plan = study["plan"]
    # --quick: 2 steps x factor 3 = 6, rounded to a multiple of the curve's 4 points
    assert plan["ssl_steps"] == 8 and plan["curve_steps"] == [0, 2, 4, 6, 8]
    curve = study["curve"]["jsrt_sex"]
    assert [p["step"] for p in curve["points"]] == plan["curve_steps"]
    assert curve["points"][0]["value"] == pytest.approx(study["tasks"]["jsrt_sex"]["random"])
    assert curve["points"][-1]["value"] == pytest.approx(study["tasks"]["jsrt_sex"]["ssl"])  # the same weights
    assert curve["last_step"]["verdict"] in ("rising", "flat", "falling")
    for s in plan["curve_steps"][1:]:
        assert (out / "runs" / "ssl" / "export" / f"step_{s:07d}" / "dinov2.safetensors").is_file()
    # curated arm: curate --target 12 over the `all` groups, trained with the selection, compared with all-n12
    assert study["models"]["curated_twin_dir"].endswith("sweep/runs/all-n12")
    assert set(study["curated"]) == {"jsrt_sex"} and {"curated", "random_subset", "delta_ci"} <= set(study["curated"]["jsrt_sex"])
    sel = json.loads((out / "curate" / "selection.json").read_text())
    assert sum(len(sh["keep"]) for st in sel["sets"] for sh in st["shards"].values()) == 12
    cur_cfg = OmegaConf.load(out / "runs" / "curated-n12" / "config.yaml")
    assert {Path(s.selection).name for s in cur_cfg.data.sources} == {"selection.json"}
    # every other run's sources carry the held-out near-duplicate selection
    nd = study["data"]["near_duplicates"]
    assert nd["encoder"] and nd["threshold"] > 0 and set(nd["per_task"]) >= {"jsrt_sex", "jsrt_anatomy"}
    for run in ("ssl", "stage1", "stage2_from_scratch"):
        srcs = OmegaConf.load(out / "runs" / run / "config.yaml").data.sources
        assert all(Path(s.selection).name == "heldout_selection.json" for s in srcs), run

    # held out: no test image of an evaluated task, as eval splits it, is in any shard set
    tests = {str(Path(td.images[i]).resolve()) for t in ("jsrt_sex", "jsrt_anatomy")
             for td in [load_task(load_spec(t), test_data, 60)] for i in td.indices("test")}
    sources = [s for g in study["data"]["groups"].values() for s in study_data.shard_sources(g["path"])]
    assert len(sources) == sum(g["images"] for g in study["data"]["groups"].values()) > 0
    assert not set(sources) & tests
    assert all(g["held_out_images_found"] == 0 for g in study["data"]["groups"].values())

    # stage 2 started from stage 1's export; the random baseline is built from the SSL run's own config
    s2 = (out / "runs" / "stage2_from_stage1" / "config.yaml").read_text()
    assert "runs/stage1/export/latest/dinov2.safetensors" in s2 and "dino_head.safetensors" in s2
    ssl_cfg, rnd_cfg = (OmegaConf.load(Path(study["models"][k]) / "config.yaml") for k in ("ssl_dir", "random_dir"))
    assert ssl_cfg.model == rnd_cfg.model and ssl_cfg.train.seed == rnd_cfg.train.seed == 1
    assert study["plan"]["batch"] == ssl_cfg.data.batch_size_per_gpu and study["cluster_reason"]
    for f in ("report.md", "ssl_vs_random.png", "continual.png", "scaling.png", "loss_curves.png", "curve.png",
              "curated.png"):
        assert (out / f).stat().st_size > 0, f
    report = (out / "report.md").read_text()
    assert "Which claims hold" in report and "Held-out policy" in report and "Learning curve of the SSL run" in report

    # --reevaluate: no run trains again, every sweep run evaluates itself again, the wall clock stays the training's
    from launch.jobs import runstate

    sweep_dirs = sorted((out / "sweep" / "runs").iterdir())
    jobs = {d.name: runstate.read_submission(d)["job_id"] for d in [*sweep_dirs, *(out / "runs").iterdir()]}
    evals = {d.name: (d / "eval" / "results.json").stat().st_mtime_ns for d in sweep_dirs}
    proc = subprocess.run(["bash", str(REPO / "scripts/laptop_study.sh"), str(out), "1", "--quick", "--reevaluate"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("eval: again for") == len(sweep_dirs) == 6
    assert {d.name: runstate.read_submission(d)["job_id"] for d in [*sweep_dirs, *(out / "runs").iterdir()]} == jobs
    assert all((d / "eval" / "results.json").stat().st_mtime_ns > evals[d.name] for d in sweep_dirs)
    again = json.loads((out / "study.json").read_text())
    assert again["minutes"] == study["minutes"] and again["reevaluated_minutes"] > 0
    assert "evaluated again with `--reevaluate`" in (out / "report.md").read_text()

    from dinotrain.cli import main as cli_main

    assert cli_main(["study", "--combine", str(out), str(out), "--out", str(out)]) == 0
    seeds = json.loads((out / "seeds.json").read_text())
    assert seeds["seeds"] == [1, 1] and "jsrt_sex" in seeds["tasks"]
    assert "seed 1 | seed 1" in (out / "report.md").read_text()


def test_scaling_plot_draws_a_power_law_only_where_the_points_can_carry_one():
    from launch.sweeps.scaling import no_fit_reason

    sizes = [57, 172, 515]
    # a trend whose ends' CIs are apart: a curve is drawn
    assert no_fit_reason(sizes, [0.6, 0.7, 0.8], [0.55, 0.65, 0.75], [0.65, 0.75, 0.85]) is None
    # the seed-0 study's jsrt_sex (cxr): ends' CIs overlap, the trend cannot be told from flat
    assert no_fit_reason(sizes, [0.800, 0.837, 0.816], [0.663, 0.713, 0.680], [0.921, 0.940, 0.926]) == "CIs overlap"
    # R² below 0 (covid_age): no power law reaches it
    assert no_fit_reason(sizes, [-0.05, -0.05, -0.1], [-0.3, -0.3, -0.4], [0.1, 0.1, 0.05]) == "values <= 0"
    assert no_fit_reason([57, 515], [0.6, 0.9], [0.55, 0.85], [0.65, 0.95]) == "2 sizes"
    # the largest size worse than the smallest, CIs apart: a (falling) curve is drawn too
    assert no_fit_reason(sizes, [0.9, 0.8, 0.7], [0.88, 0.7, 0.65], [0.92, 0.85, 0.75]) is None


def test_plots_draw_a_ci_that_does_not_contain_its_estimate(tmp_path):
    """A percentile bootstrap CI can miss its point estimate (skewed R², small test sets): the plots draw
    the CI's own ends instead of refusing negative error offsets."""
    import matplotlib.pyplot as plt
    import numpy as np

    from launch.study import study_report

    drawn = []
    real = plt.Axes.errorbar

    def spy(ax, x, y, **kw):
        drawn.append((np.atleast_1d(x), np.atleast_1d(y), kw.get("xerr"), kw.get("yerr")))
        return real(ax, x, y, **kw)

    rows = {"jsrt_age": {"metric": "ridge/r2", "delta": 0.05, "delta_ci": [0.06, 0.2]}}  # estimate below its CI
    scaling = [{"diversity": "cxr", "task": "jsrt_age", "metric": "ridge/r2", "images": n, "value": v, "ci": [lo, hi]}
               for n, v, lo, hi in ((57, -0.03, -0.14, -0.05), (172, -0.02, -0.13, 0.005), (515, 0.1, 0.0, 0.2))]
    plt.Axes.errorbar = spy
    try:
        assert study_report.plot_deltas(rows, "t", "x", tmp_path / "d.png").stat().st_size > 0
        assert study_report.plot_scaling(scaling, tmp_path / "s.png").stat().st_size > 0
    finally:
        plt.Axes.errorbar = real
    (mid, _, xerr, _), (_, smid, _, yerr) = drawn
    assert np.allclose([mid[0] - xerr[0], mid[0] + xerr[0]], [0.06, 0.2])
    assert np.allclose(smid - yerr, [-0.14, -0.13, 0.0]) and np.allclose(smid + yerr, [-0.05, 0.005, 0.2])


def test_study_options_and_flags_are_spelled_once(tmp_path, monkeypatch):
    """Every StudyOptions field with help has its flag; no flag = the dataclass default (one data_root
    default); --quick takes configs/study/laptop.yaml's values; flags given win, --set adds to --quick's."""
    import argparse
    from dataclasses import fields

    from launch.study.options import StudyOptions, add_option_flags, options_from_args
    from launch.study.settings import laptop

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    add_option_flags(ap)
    flags = {a.dest for a in ap._actions} - {"help", "out"}
    assert flags == {f.name for f in fields(StudyOptions) if "cli" in f.metadata}
    monkeypatch.setenv("DINOTRAIN_TEST_DATA", str(tmp_path / "d"))
    plain = options_from_args(ap.parse_args([str(tmp_path / "o")]))
    assert plain.data_root == StudyOptions(out=tmp_path).data_root == tmp_path / "d"
    assert plain.tasks == [*laptop().cxr_tasks, *laptop().other_tasks, *laptop().seg_tasks] and plain.bootstrap == 1000
    quick = options_from_args(ap.parse_args([str(tmp_path / "o"), "--quick", "--bootstrap", "7", "--set", "a.b=1"]))
    assert (quick.quick, quick.steps, quick.resolution, quick.bootstrap) == (True, 2, 56, 7)
    assert quick.overrides == [*laptop().quick["overrides"], "a.b=1"]


@pytest.mark.parametrize("text, says", [("tasks: [a]\n", r"s.yaml: Key 'tasks' not in 'StudySettings'"),
                                         ("scaling_pool: derm\nbudget: {ssl_steps_factor: 2, curve_points: 3}\ntimings: {train_img_per_s: 1}\n",
                                          "missing mandatory value: train_ref_tokens")])
def test_study_settings_refuse_a_wrong_file(tmp_path, text, says):
    from launch.study.settings import load_settings

    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ValueError, match=says):
        load_settings(tmp_path / "s.yaml")


def test_the_plan_writes_study_json_as_published():
    """study.json's `plan` is asdict(StudyPlan): the published studies' keys, in their order."""
    from dataclasses import fields

    from launch.study.plan import StudyPlan

    studies = sorted((REPO / "docs/results/laptop_study").rglob("study.json"))
    assert studies
    for path in studies:
        assert [f.name for f in fields(StudyPlan)] == list(json.loads(path.read_text())["plan"]), path


def test_the_published_reports_re_render_byte_for_byte(tmp_path):
    """What docs/results/laptop_study publishes is what `render` makes of its study.json files today:
    a change to the report code (or to what it reads) that alters a published number shows here."""
    import filecmp
    import shutil

    from launch.study.study_report import render

    src = REPO / "docs" / "results" / "laptop_study"
    copy = tmp_path / "laptop_study"
    shutil.copytree(src, copy)
    folders = [d for d in (copy / "seed1", copy / "seed2", copy / "budget_pilot", copy) if (d / "study.json").is_file()]
    for d in folders:
        render(d)
    checked = [f for f in sorted(src.rglob("*")) if f.is_file() and f.suffix in (".md", ".json")]
    differ = [str(f.relative_to(src)) for f in checked
              if not filecmp.cmp(f, copy / f.relative_to(src), shallow=False)]
    assert len(folders) >= 2 and len(checked) >= 4 and differ == []


# ----------------------------------------------------------------------------- arms, learning curve
def test_the_plan_splits_the_budget_between_the_arms(tmp_path, monkeypatch):
    """Sizes come from the scaling pool (/16, /4, all); the SSL run gets budget.ssl_steps_factor x the
    others' steps, rounded to a multiple of its curve's points (evenly spaced checkpoints ending at its
    last step); arms left out take no time."""
    from dinotrain.config import load_config
    from launch.study.options import StudyOptions
    from launch.study.plan import curve_steps, default_sizes, plan, run_units
    from launch.study.settings import laptop

    assert default_sizes(4787) == [299, 1197, 4787]
    assert curve_steps(600, 6) == [0, 100, 200, 300, 400, 500, 600] and curve_steps(4, 4) == [0, 1, 2, 3, 4]
    assert run_units(["ssl", "scaling", "continual", "curated"], [1, 2, 3], 3.0) == (11, 13.0)
    assert run_units(["ssl"], [1, 2, 3], 2.5) == (1, 2.5)
    cfg = load_config(REPO / "configs/pretrain/laptop_real.yaml")
    pool = {"cxr": 510, "derm": 4787, "us": 624, "mri": 2613, "ct": 38}
    images = {"all": 9000, "curve": 8000, "scaling": 8000, "continual": 1000}
    full = plan(StudyOptions(out=tmp_path), cfg, pool, images)
    b = laptop().budget
    assert full.sizes == [299, 1197, 4787] and full.runs == 11 and full.arms == ["ssl", "scaling", "continual", "curated"]
    assert full.ssl_steps % b.curve_points == 0
    assert abs(full.ssl_steps - b.ssl_steps_factor * full.steps) <= b.curve_points / 2
    assert full.curve_steps == curve_steps(full.ssl_steps, b.curve_points)
    assert full.estimate_minutes <= StudyOptions(out=tmp_path).minutes
    only_ssl = plan(StudyOptions(out=tmp_path, arms=["ssl"]), cfg, pool, images)
    assert only_ssl.runs == 1 and only_ssl.steps > full.steps  # the whole budget on one run


def _curve_result(values: dict[str, list[float]], last_ci: dict[str, tuple[float, float]]):
    models = [f"m{s}" for s in (0, 100, 200)]
    records, paired, last = [], [], []
    for task, vals in values.items():
        for m, v in zip(models, vals):
            records.append({"model": m, "task": task, "kind": "linear", "metric": "auroc", "value": v,
                            "ci_low": v - 0.02, "ci_high": v + 0.02, "n": 500})
            if m != "m0":
                paired.append({"model": m, "reference": "m0", "task": task, "kind": "linear", "metric": "auroc",
                               "value": v, "reference_value": vals[0], "delta": v - vals[0], "ci_low": v - vals[0] - 0.01,
                               "ci_high": v - vals[0] + 0.01, "n": 500})
        lo, hi = last_ci[task]
        last.append({"model": "m200", "reference": "m100", "task": task, "kind": "linear", "metric": "auroc",
                     "value": vals[2], "reference_value": vals[1], "delta": vals[2] - vals[1], "ci_low": lo,
                     "ci_high": hi, "n": 500})
    return {"records": records, "paired": paired}, {"records": [], "paired": last}, dict(zip(models, (0, 100, 200)))


def test_the_learning_curve_says_rising_flat_or_falling_from_the_last_interval():
    from launch.study.study_report import curve_rows

    tasks = ["ham10000_large", "brain_mri_large", "busi"]
    result, last, steps = _curve_result(
        {"ham10000_large": [0.80, 0.84, 0.86], "brain_mri_large": [0.80, 0.85, 0.85], "busi": [0.7, 0.75, 0.72]},
        {"ham10000_large": (0.005, 0.035), "brain_mri_large": (-0.01, 0.01), "busi": (-0.05, -0.01)})
    rows = curve_rows(result, last, steps, tasks)
    assert [p["step"] for p in rows["ham10000_large"]["points"]] == [0, 100, 200]
    assert rows["ham10000_large"]["points"][2]["delta_from_step0"] == pytest.approx(0.06)
    assert {t: rows[t]["last_step"]["verdict"] for t in tasks} == {
        "ham10000_large": "rising", "brain_mri_large": "flat", "busi": "falling"}
    assert rows["busi"]["last_step"]["from"] == 100 and rows["busi"]["last_step"]["to"] == 200
    c = claims({"tasks": {}, "continual": {}, "scaling": [], "curve": rows})["still_rising"]
    assert c == {"rising": ["ham10000_large"], "flat": ["brain_mri_large"], "falling": ["busi"], "n_tasks": 3}
    assert curve_rows(None, None, {}, tasks) == {}


def test_curated_claim_needs_a_ci_above_zero_and_none_below():
    curated = {"a": _row(0.02, 0.005, 0.04), "b": _row(0.0, -0.02, 0.02)}
    c = claims({"tasks": {}, "continual": {}, "scaling": [], "curated": curated})["curated_beats_random"]
    assert c["holds"] and c["ci_above_zero"] == ["a"]
    curated["b"] = _row(-0.03, -0.05, -0.01)
    assert not claims({"tasks": {}, "continual": {}, "scaling": [], "curated": curated})["curated_beats_random"]["holds"]


def test_steps_to_clear_extrapolates_the_last_interval():
    from launch.study.study_report import steps_to_clear

    pts = [{"step": 0}, {"step": 100}, {"step": 200, "delta_ci": [-0.03, 0.05]}]
    assert steps_to_clear(pts, 0.01) == 300  # 0.01 per 100 steps lifts the lower end from -0.03 to 0 in 300 steps
    assert steps_to_clear(pts, 0.0) is None and steps_to_clear(pts, -0.01) is None
    pts[-1]["delta_ci"] = [0.001, 0.05]
    assert steps_to_clear(pts, -0.01) == 0  # already clear


def test_a_selection_that_keeps_nothing_of_a_source_is_one_line(mixed_shards, tmp_path):
    """Balanced sampling can take nothing from a small set: the loader names the source and the fix
    instead of failing on an empty list (the study leaves such a source out of its curated run)."""
    from dinotrain.config import load_config
    from dinotrain.data.loader import TrainLoader
    from dinotrain.data.selection import FORMAT, manifest_sha256
    from dinotrain.data.shard_index import DataError, index_source

    name, root = next((k, str(v)) for k, v in mixed_shards.items())
    shards: dict = {}
    for r in index_source(root, "train"):  # every sample dropped
        shards.setdefault(Path(r.shard).name, {"keep": [], "drop": {}})["drop"][r.key] = "test: dropped"
    sel = tmp_path / "selection.json"
    sel.write_text(json.dumps({"format": FORMAT, "sets": [{"path": root, "name": name,
                                                           "manifest_sha256": manifest_sha256(root), "shards": shards}]}))
    cfg = load_config(REPO / "configs/pretrain/tiny_cpu.yaml",
                      [f"output_dir={tmp_path / 'run'}", f"data.sources=[{{name: {name}, path: '{root}', selection: '{sel}'}}]"])
    with pytest.raises(DataError, match=rf"data.sources '{name}' .*: no train sample left after its selection"):
        TrainLoader(cfg)


@pytest.mark.parametrize("arms, says", [("ssl,foo", "--arms ssl,foo: give some of ssl, scaling, continual, curated"),
                                        ("curated", "--arms curated compares with the sweep's random subset")])
def test_arms_are_checked_up_front(tmp_path, test_data, capsys, arms, says):
    from dinotrain.cli import main as cli_main

    assert cli_main(["study", str(tmp_path / "s"), "--data", str(test_data), "--arms", arms, "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says in err and not (tmp_path / "s").exists()
