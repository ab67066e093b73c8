"""report.md and seeds.md of the laptop study, written from study.json (no number is typed by hand)."""

from __future__ import annotations

from pathlib import Path


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _ci(ci) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _verdict(v: dict) -> str:
    lo, hi = (v.get("delta_ci") or [None, None])
    if lo is not None and lo > 0:
        return "better (CI > 0)"
    if hi is not None and hi < 0:
        return "worse (CI < 0)"
    return "no clear difference"


def _comparison_table(rows: dict[str, dict], a: str, b: str) -> list[str]:
    lines = [f"| task | metric | n test | {a} | {b} | {a} − {b} [95% paired CI] | verdict |",
             "|---|---|---:|---|---|---|---|"]
    for task, v in rows.items():
        ci = v.get("ci", {})
        lines.append(f"| {task} | {v['metric']} | {v.get('n_test', '')} | {_f(v[a])}{_ci(ci.get(a))} | "
                     f"{_f(v[b])}{_ci(ci.get(b))} | {_f(v['delta'])}{_ci(v.get('delta_ci'))} | {_verdict(v)} |")
    return lines


def _scaling_table(rows: list[dict]) -> list[str]:
    lines = ["| task | metric | diversity | training images | value [95% CI] |", "|---|---|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {r['diversity']} | {r['images']} | {_f(r['value'])}{_ci(r['ci'])} |")
    return lines


def _claims(c: dict) -> list[str]:
    s, k, sc = c["ssl_beats_random"], c["continual_beats_scratch"], c["scaling"]
    yes = {True: "**holds**", False: "**does not hold**"}
    out = []
    if s["n_image_tasks"]:
        out.append(
            f"- SSL beats random init (target: CI of SSL − random above 0 on >= 6 image-level tasks incl. a sex and an "
            f"age task, and a higher Dice on a segmentation task): {yes[s['holds']]}. CI above 0 on "
            f"{len(s['image_tasks_ci_above_zero'])} of {s['n_image_tasks']} image-level tasks "
            f"({', '.join(s['image_tasks_ci_above_zero']) or 'none'}); sex task: {s['sex_task']}, age task: "
            f"{s['age_task']}; higher Dice on: {', '.join(s['segmentation_higher_dice']) or 'none'} "
            f"(CI above 0 on: {', '.join(s['segmentation_ci_above_zero']) or 'none'}).")
    if k["n_tasks"]:
        out.append(
            f"- Continual pretraining beats stage 2 from scratch on the CXR tasks: {yes[k['holds']]}. CI above 0 on "
            f"{', '.join(k['ci_above_zero']) or 'none'}; CI below 0 on {', '.join(k['ci_below_zero']) or 'none'}; "
            f"mean difference {_f(k['mean_delta'])} over {k['n_tasks']} tasks.")
    if sc["n_pairs"]:
        out.append(
            "- More data helps (largest sweep size beats the smallest on the scaling tasks; needs most (diversity, "
            f"task) pairs better, one with the CIs apart, none worse with the CIs apart): {yes[sc['holds']]}: "
            f"{sc['n_largest_better']} of {sc['n_pairs']} (diversity, task) pairs; with separated CIs: "
            f"{sum(p['cis_separate'] for p in sc['pairs'])}.")
    cu = c.get("curated_beats_random") or {}
    if cu.get("n_tasks"):
        out.append(f"- A curated subset beats a random one of the same size: {yes[cu['holds']]}. CI above 0 on "
                   f"{', '.join(cu['ci_above_zero']) or 'none'}; CI below 0 on {', '.join(cu['ci_below_zero']) or 'none'} "
                   f"({cu['n_tasks']} tasks).")
    r = c.get("still_rising") or {}
    if r.get("n_tasks"):
        out.append(f"- The SSL run is still improving at its last step (last − previous checkpoint, CI above 0): on "
                   f"{len(r['rising'])} of {r['n_tasks']} learning-curve tasks ({', '.join(r['rising']) or 'none'}).")
    return out


def _runs_table(runs: dict[str, dict]) -> list[str]:
    lines = ["| run | training images | steps | final total loss | teacher entropy / max | head bottleneck cos "
             "| collapse warnings |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in runs.items():
        w = str(r["collapse_warnings"]) + (f" (first: {r['first_collapse_warning'][:90]}…)"
                                           if r.get("first_collapse_warning") else "")
        lines.append(f"| {name} | {r.get('images') or ''} | {r['steps']} | {_f(r.get('final_total_loss'))} | "
                     f"{_f(r.get('final_teacher_entropy_ratio'), 4)} | {_f(r.get('final_head_bottleneck_cos'), 4)} | {w} |")
    return lines


def _span(values: list[float], digits: int = 3) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def limits(study: dict) -> list[str]:
    """What bounds the SSL - random comparison, computed from the study's own numbers: how small a
    difference the test sets can resolve, how strong the random baseline is, how much training
    each run got, and how far from uniform the teacher's targets moved."""
    image = {k: v for k, v in study["tasks"].items() if v.get("kind") != "segmentation"}
    # an age task whose probe predicted the training mean for both models has a [0, 0] CI: it says
    # nothing about what the test set can resolve
    half = {k: (v["delta_ci"][1] - v["delta_ci"][0]) / 2 for k, v in image.items()
            if v.get("delta_ci") and None not in v["delta_ci"] and not both_at_mean(v)}
    if not half:
        return ["_No image-level task with a CI: nothing to say about limits._"]
    n = [v["n_test"] for v in image.values() if v.get("n_test")]
    auroc = [v["random"] for v in image.values() if v["metric"].endswith("auroc") and v.get("random") is not None]
    plan, runs = study["plan"], study.get("runs", {})
    lines = [
        f"- **Test-set size.** The {len(image)} image-level tasks have {min(n)}-{max(n)} test images; half the width "
        f"of the paired 95% CI of SSL − random is {_span(list(half.values()))} in the task's metric (median "
        f"{sorted(half.values())[len(half) // 2]:.3f}). A true gain smaller than that cannot show as "
        "\"CI above 0\" here, whatever the encoder."]
    if auroc:
        lines.append(f"- **A strong baseline.** The random-init features (the recipe's initial weights) with a linear "
                     f"probe already reach AUROC {_span(auroc)} on the classification tasks, so pretraining has to "
                     "add on top of that, not on top of chance.")
    if plan.get("batch") and plan.get("ssl_steps"):
        drawn = plan["ssl_steps"] * plan["batch"]
        pool = sum(g["images"] for g in study["data"]["groups"].values())
        lines.append(f"- **Compute.** The SSL run takes {plan['ssl_steps']} steps of batch {plan['batch']}: {drawn:,} "
                     f"images drawn, {drawn / max(1, pool):.1f} passes over its pool ({pool:,} images); every other "
                     f"run {plan['steps']} steps ({plan['steps'] * plan['batch']:,} images drawn, "
                     f"{plan['steps'] * plan['batch'] / max(plan['sizes']):.1f} passes over the sweep's largest set of "
                     f"{max(plan['sizes']):,}); the whole study {study['minutes']:.0f} min on this machine.")
    elif plan.get("batch"):
        drawn = plan["steps"] * plan["batch"]
        lines.append(f"- **Compute.** Every run takes {plan['steps']} steps of batch {plan['batch']}: {drawn:,} images "
                     f"drawn, {drawn / max(plan['sizes']):.1f} passes over the largest set ({max(plan['sizes'])} "
                     f"images); the whole study {study['minutes']:.0f} min on this machine.")
    ent = [r["final_teacher_entropy_ratio"] for r in runs.values() if r.get("final_teacher_entropy_ratio") is not None]
    if ent:
        lines.append(f"- **Training signal.** The teacher's output entropy at the last step is {_span(ent)} of its "
                     "maximum across the runs (1 = uniform targets): the DINO targets were still close to uniform "
                     "when the runs stopped.")
    lines += _age_limits(study)
    lines += ["", "| task | n test | ± half CI width of SSL − random | random |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {image[k].get('n_test', '')} | {h:.3f} | {_f(image[k].get('random'))} |" for k, h in half.items()]
    return lines


def _age_choices(row: dict) -> dict[str, dict]:
    """model -> what its age probe chose, for the models of a comparison row that recorded it."""
    return {m: pr for m, pr in (row.get("probe") or {}).items() if pr and "mean_predictor" in pr}


def both_at_mean(row: dict) -> bool:
    """Both models' age probes predicted the training mean (the difference is 0 by construction)."""
    chosen = _age_choices(row)
    return len(chosen) >= 2 and all(pr["mean_predictor"] for pr in chosen.values())


def _age_limits(study: dict) -> list[str]:
    """Which age comparisons the ridge probe's cross-validation (train + val only) resolved to the
    training mean, for both models of the pair (difference 0 by construction) or for one."""
    both, one, neither, no_cv = [], [], [], []
    for section in ("tasks", "continual"):
        for task, v in study.get(section, {}).items():
            chosen = _age_choices(v)
            if len(chosen) < 2:
                continue
            label = f"{task} ({' vs '.join(chosen)})"
            at_mean = [m for m, pr in chosen.items() if pr["mean_predictor"]]
            no_cv += [f"{task} ({m})" for m, pr in chosen.items() if pr.get("chosen_by") == "too_few_groups"]
            if both_at_mean(v):
                both.append(label)
            elif at_mean:
                one.append(f"{label}: {', '.join(at_mean)} at the mean")
            else:
                neither.append(label)
    if not (both or one or neither):
        return []
    parts = []
    if both:
        parts.append(f"for both models on {'; '.join(both)}, whose R² difference is therefore 0 by construction "
                     "(neither model's features carried age signal a linear probe could find beyond noise)")
    if one:
        parts.append(f"for one model on {'; '.join(one)}")
    if neither:
        parts.append(f"for neither on {'; '.join(neither)}")
    line = ("- **Age.** The ridge probe chooses its penalty by cross-validation on train + val (patient-grouped "
            "folds, one-standard-error rule; predicting the training mean is one of the candidates). It chose "
            "the mean " + "; ".join(parts) + ".")
    if no_cv:
        line += f" Too few patients for cross-validation (the mean by default): {', '.join(no_cv)}."
    return [line]


def _yes(v) -> str:
    return {True: "yes", False: "no"}.get(v, str(v))


def seeds_table(seeds: dict) -> list[str]:
    """One row per task: the difference and its CI for every seed, and whether all CIs are above 0."""
    ss = seeds["seeds"]
    out = []
    for section, title in (("tasks", "SSL − random"), ("continual", "from stage 1 − from scratch"),
                           ("curated", "curated − random subset")):
        if not seeds.get(section):
            continue
        out += [f"### {title}", "", "| task | metric | " + " | ".join(f"seed {s}" for s in ss) + " | CI > 0 in all |",
                "|---|---|" + "---|" * len(ss) + "---|"]
        for task, row in seeds[section].items():
            cells = ["0 (both: training mean)" if c and c.get("both_at_mean") else
                     f"{_f(c['delta'])}{_ci(c['delta_ci'])}" if c else "–" for c in row["per_seed"]]
            out.append(f"| {task} | {row['metric']} | " + " | ".join(cells) + f" | {_yes(row['all_above_zero'])} |")
        out.append("")
    if any(c and c.get("both_at_mean") for sec in ("tasks", "continual") for r in seeds.get(sec, {}).values()
           for c in r["per_seed"]):
        out += ["\"both: training mean\": the age probe's cross-validation (train + val) chose to predict the "
                "training mean for both models, so the difference is 0 by construction.", ""]
    out += ["### Claims per seed", "", "| claim | " + " | ".join(f"seed {s}" for s in ss) + " |",
            "|---|" + "---|" * len(ss)]
    for claim, vals in seeds["claims"].items():
        out.append(f"| {claim} | " + " | ".join(_yes(v) for v in vals) + " |")
    if seeds.get("still_rising"):
        out.append("| SSL still rising at its last step on | "
                   + " | ".join(", ".join(r) or "none" for r in seeds["still_rising"]) + " |")
    return out + [""]


def _scratch(study: dict) -> str:
    scratch = Path(study["models"].get("scratch_dir") or "stage2_from_scratch")
    if "sweep" in scratch.parts:
        return f"the sweep's `{scratch.name}` run (identical stage-2 budget and data)"
    return f"`{scratch.name}`, stage 2's config without the initialisation (same budget and data)"


_PROBES = {"linear": "linear probe", "knn": "kNN", "ridge": "ridge regression", "linear_head": "linear segmentation head"}


def _headline_metrics(study: dict) -> str:
    used = dict.fromkeys(v["metric"] for v in [*study["tasks"].values(), *study["continual"].values(),
                                                  *study.get("curated", {}).values()])
    return ", ".join(f"`{m}` ({_PROBES.get(m.split('/')[0], m.split('/')[0])})" for m in used)


def _curve_table(curve: dict[str, dict]) -> list[str]:
    steps = sorted({p["step"] for v in curve.values() for p in v["points"]})
    lines = ["| task | metric | n test | " + " | ".join(f"step {s}" for s in steps)
             + " | last − previous checkpoint [95% paired CI] | at the end |",
             "|---|---|---:|" + "---|" * len(steps) + "---|---|"]
    for task, v in curve.items():
        by = {p["step"]: p for p in v["points"]}
        cells = [f"{_f(by[s]['value'])}{_ci(by[s]['ci'])}" if s in by else "–" for s in steps]
        last = v.get("last_step") or {}
        lines.append(f"| {task} | {v['metric']} | {v['points'][0]['n_test']} | " + " | ".join(cells)
                     + f" | {_f(last.get('delta'))}{_ci(last.get('delta_ci'))} | {last.get('verdict', '–')} |")
    return lines


def _curve_words(study: dict) -> list[str]:
    """What the curve says about the steps the claims need, computed from it."""
    r = study["claims"].get("still_rising", {})
    if not r.get("n_tasks"):
        return []
    plan = study["plan"]
    out = [f"At the end ({plan['ssl_steps']} steps) the last checkpoint beats the one before with a CI above 0 on "
           f"{len(r['rising'])} of {r['n_tasks']} tasks ({', '.join(r['rising']) or 'none'}); flat on "
           f"{', '.join(r['flat']) or 'none'}; falling on {', '.join(r['falling']) or 'none'}."]
    if r["rising"]:
        out.append("Still rising: more steps would still pay on those tasks; the curve gives no sign of where it "
                   "flattens, so the steps the claims need are more than this run had.")
    else:
        out.append("No task still rises with a CI above 0 over the last interval: at this batch and resolution, "
                   "more steps of this recipe are not where the claims' missing evidence comes from.")
    need = []
    for task, v in study["curve"].items():
        n = v.get("more_steps_to_clear")
        if n == 0:
            need.append(f"{task}: its CI of the difference from step 0 already clears 0")
        elif n is not None:
            need.append(f"{task}: ~{n:,} more steps at the last interval's rate")
        elif v.get("last_step"):
            need.append(f"{task}: no estimate (the last interval did not rise)")
    if need:
        out.append("Steps until the CI of (checkpoint − step 0) would clear 0, extrapolating the last interval "
                   "linearly with the CI's width unchanged (a floor, not a forecast): " + "; ".join(need) + ".")
    return out


def _setup(study: dict) -> list[str]:
    data, ev, plan = study["data"], study["eval"], study["plan"]
    groups = ", ".join(f"{g} {v['images']} ({'+'.join(v['datasets'])})" for g, v in data["groups"].items())
    arms = plan.get("arms") or ["ssl", "scaling", "continual"]
    out = [f"- Recipe: `{Path(study['recipe']).name}` + study overrides `{' '.join(study['overrides']) or '(none)'}`; "
           f"seed {study['seed']} (train.seed and data.seed); every run {plan['steps']} steps of batch "
           f"{plan.get('batch')}" + (f", but the SSL run: {plan['ssl_steps']}" if plan.get("ssl_steps") else "") + ".",
           f"- Pretraining shard sets (images after the hold-out): {groups}."]
    if "ssl" in arms:
        out.append(f"- SSL arm: one run on the whole pool, {plan.get('ssl_steps')} steps, exported at steps "
                   f"{', '.join(map(str, plan.get('curve_steps', [])[1:]))}; random = the same network at the "
                   "recipe's initial weights (same arch, LayerScale init and seed, built by the trainer and exported "
                   "at step 0), which is also the learning curve's step 0.")
    if "scaling" in arms:
        out.append(f"- Data-scaling sweep: sizes {plan['sizes']} training images x diversity "
                   + " and ".join(f"`{k}` = [{', '.join(v)}]" for k, v in study.get("diversity", {}).items())
                   + " (same totals, split over the sources by their sizes).")
    if "continual" in arms:
        out.append("- Continual: stage 1 on derm + us + mri + ct, exported; stage 2 on cxr from its backbone and DINO "
                   "head (`model.pretrained`, `model.pretrained_head`); from scratch = " + _scratch(study) + ".")
    if "curated" in arms and study.get("models", {}).get("curated_dir"):
        out.append(f"- Curated arm: `dinotrain curate --target` (near-duplicates dropped, then balanced k-means "
                   f"sampling) over the `all` groups gives `{Path(study['models']['curated_dir']).name}`; it is "
                   f"compared with the sweep's `{Path(study['models']['curated_twin_dir']).name}` (a random subset of "
                   "the same size, same steps).")
    split = "validation (test images not read)" if ev.get("split") == "val" else "test"
    out.append(f"- Evaluation on the {split} split: frozen teacher features at {ev['resolution']} px (not 518: CPU); "
               f"headline metric per task (probe/metric): {_headline_metrics(study)}; {ev['bootstrap']} bootstrap "
               f"resamples; {ev['ci']}.")
    return out


def _budget(plan: dict) -> list[str]:
    """How the training time was split between the arms, and why (the settings' note)."""
    if not plan.get("ssl_steps"):
        return []
    batch = plan.get("batch") or 0
    others = plan["runs"] - 1
    if others == 0:
        lines = ["## Budget", "", f"Training time: the SSL arm alone, one run of {plan['ssl_steps']} steps "
                 f"({plan['ssl_steps'] * batch:,} images drawn)."]
    else:
        lines = ["## Budget", "",
                 f"Training time: the SSL run {plan['ssl_steps']} steps ({plan['ssl_steps'] * batch:,} images drawn), "
                 f"each of the other {others} runs {plan['steps']} steps ({plan['steps'] * batch:,}); the SSL run "
                 f"holds {plan['ssl_steps'] / (plan['ssl_steps'] + others * plan['steps']):.0%} of all training steps."]
    if plan.get("budget_why"):
        lines += ["", plan["budget_why"].strip()]
    return lines + [""]


def _held_out(data: dict) -> list[str]:
    nd = data.get("near_duplicates")
    extra = ""
    if nd:
        extra = (f" Then every pool image that near-duplicates a test image under `dinotrain curate --against`'s rule "
                 f"({nd['encoder']} embedding, cosine >= {nd['threshold']}) is dropped from every run's sources (a "
                 f"selection file): {nd['dropped']} dropped (" + ", ".join(f"{g} {n}" for g, n in nd["per_group"].items())
                 + ").")
    return ["Every task below is loaded exactly as `dinotrain eval` loads it; the images of its `test` split, every "
            "other image of the same patient, lesion or near-duplicate series (the task's group column), and every "
            "copy of the same source file under another dataset folder are left out of every pretraining shard set. "
            "Only the image files named in each dataset's metadata.csv are built (never mask files). The shards were "
            "read back after building: held-out images found in them: "
            f"{sum(g.get('held_out_images_found', 0) for g in data['groups'].values())}. Held out: "
            f"{data['held_out_images']} test images and {data.get('held_out_group_images', 0)} images of their groups; "
            "test images per task: " + ", ".join(f"{k} {v}" for k, v in data["held_out_per_task"].items()) + "." + extra]


def report(study: dict, ablation: str | None, seeds: dict | None) -> str:
    plan = study["plan"]
    reevaluated = study.get("reevaluated_minutes")
    lines = [
        f"# Laptop study: RAD-DINO pretraining on real medical images (seed {study['seed']})", "",
        f"Wall clock {study['minutes']:.1f} min on this machine, "
        + ("this invocation" if reevaluated is None else "the invocation that trained the runs")
        + f" (plan estimate for an idle 2-core machine: {plan['estimate_minutes']} min)"
        + ("" if reevaluated is None else f"; evaluated again with `--reevaluate` in {reevaluated:.1f} min")
        + f"; runs launched with `launch.cluster={study['cluster']}`"
        + (f" ({study['cluster_reason']})" if study.get("cluster_reason") else "")
        + (" — **quick mode: a machinery check, the numbers mean nothing**" if study.get("quick") else "") + ".", "",
        "## Setup", "", *_setup(study), "", *_budget(plan),
        "## Held-out policy", "", *_held_out(study["data"]), "",
    ]
    if study["tasks"]:
        lines += ["## SSL vs random initialisation", "", *_comparison_table(study["tasks"], "ssl", "random"), "",
                  "![ssl vs random](ssl_vs_random.png)", ""]
    if study.get("curve"):
        lines += ["## Learning curve of the SSL run", "",
                  "Each checkpoint's teacher evaluated like the final one; step 0 is the random init above. "
                  "The last column compares the last checkpoint with the one before on the same test items.", "",
                  *_curve_table(study["curve"]), "", *_curve_words(study), "", "![learning curve](curve.png)", ""]
    if study["continual"]:
        lines += ["## Continual pretraining (stage 2 on CXR)", "",
                  *_comparison_table(study["continual"], "from_stage1", "from_scratch"), "",
                  "![continual](continual.png)", ""]
    if study["scaling"]:
        lines += ["## Data scaling", "", *_scaling_table(study["scaling"]), "",
                  "![scaling](scaling.png)  (a power law is drawn only through >= 3 sizes of positive values whose "
                  "smallest and largest sizes have CIs apart)", ""]
    if study.get("curated"):
        lines += ["## Curated vs random subset (same size, same steps)", "",
                  *_comparison_table(study["curated"], "curated", "random_subset"), "", "![curated](curated.png)", ""]
    lines += [
        "## Which claims hold (computed from the tables above)", "", *_claims(study["claims"]), "",
        "## What limited these numbers (computed from the study's own numbers)", "", *limits(study), "",
        "## Training runs", "", "Collapse indicators at the last logged step (entropy / max near 1: uniform "
        "teacher targets; bottleneck cosine near 1: the head maps every image to one vector); warnings counted "
        "with the trainer's own `CollapseWatch` (means over the last 5 logged steps) at every logged step.", "",
        *_runs_table(study.get("runs", {})), "", "![loss curves](loss_curves.png)", "",
        "## Recipe ablation", "",
        ablation.strip() if ablation else "_No ablation notes found (configs/pretrain/laptop_real.ablation.md)._", "",
        "## Seeds", "",
    ]
    if seeds:
        lines += [f"Seeds {', '.join(str(s) for s in seeds['seeds'])} (from `dinotrain study --combine`).", "",
                  *seeds_table(seeds)]
    else:
        lines += [f"This folder holds seed {study['seed']} only. Run the study with other seeds and merge them: "
                  "`dinotrain study --combine OUT0 OUT1 OUT2 --out OUT0` (adds the seeds table here).", ""]
    return "\n".join(lines) + "\n"
