"""The demo's orchestration: corpus -> shards -> 2-process pretraining -> probes -> report.

Each stage calls the public entry point of the package that owns it (shards.build, the
launcher's `submit_run` with `launch.cluster=local`, `dinotrain.eval.run.evaluate_models`), so the
demo exercises exactly the code a real run uses. Stages whose output already exists in
`--out` are reused, so a second `dinotrain demo` only redoes what changed (`--fresh` resets).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinotrain.run_layout import config_path, metrics_path

# (what, module, attribute): the pieces of the chain, checked before anything runs
ARCH = "vit_tiny"
PATCH = 14
IMAGE_SIZE = 128      # synthetic images and shards: 128 x 128
GLOBAL_CROP = 70      # 5 x 5 patches of 14: small crops keep a CPU step well under a second
LOCAL_CROP = 42       # 3 x 3 patches
EVAL_RESOLUTION = 84  # 6 x 6 patches
# Expected wall-clock seconds per step of the demo's training config (2 processes sharing 2 CPU
# cores, batch 8 per process): turns --minutes into a step count. The budget is enforced anyway
# (see `pretrain`), so a slower machine trains fewer steps instead of overrunning.
SECONDS_PER_STEP = 0.8
# Time kept for what follows training (the teacher export when the budget cut training short,
# evaluation of two encoders, plots), in seconds: the budget stops training this long before its end.
AFTER_TRAINING_S = 75.0
# Time the planned steps leave for the last step's checkpoint and teacher export inside the job;
# once every planned step has run the job is never cancelled, so this is what keeps it in budget.
FINAL_SAVE_S = 15.0
# Time expected before the first step (corpus, shards, process start-up), in seconds.
BEFORE_TRAINING_S = 60.0


@dataclass
class DemoOptions:
    out: str = "demo_out"
    minutes: float = 8.0
    seed: int = 0
    processes: int = 2
    steps: int | None = None
    images: int | None = None
    fresh: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Plan:
    images: int
    steps: int
    batch_size: int
    local_crops: int


def plan(minutes: float, steps: int | None = None, images: int | None = None) -> Plan:
    """Turn a time budget into corpus size and training steps (pure; documented in --help).

    Training gets what the fixed costs (start-up, the final checkpoint and export, evaluation) leave;
    the corpus grows with the budget (about 40 images per minute) so that longer runs see more
    data, not just more epochs.
    """
    if minutes <= 0:
        raise ValueError(f"--minutes must be > 0, got {minutes}")
    train_s = max(20.0, minutes * 60.0 - BEFORE_TRAINING_S - FINAL_SAVE_S - AFTER_TRAINING_S)
    n_steps = steps if steps is not None else max(10, int(train_s / SECONDS_PER_STEP))
    n_images = images if images is not None else int(min(3000, max(120, 40 * minutes)))
    n_images = max(30, n_images - n_images % 3)  # whole triples: equal counts per modality
    return Plan(images=n_images, steps=int(n_steps), batch_size=8, local_crops=4)


def _num(v: float | None) -> str:
    return "?" if v is None else f"{v:.3f}"


# ----------------------------------------------------------------------------- stages
def build_corpus(root: Path, n: int, seed: int, progress: bool):
    """The synthetic corpus under `root`, reused when a previous demo made the same one."""
    from launch.demo.synthetic import CorpusInfo, make_corpus

    done = root / ".done"
    stamp = f"n={n} seed={seed} size={IMAGE_SIZE}"
    if done.is_file() and done.read_text() == stamp:
        info = json.loads((root / "corpus.json").read_text())
        return CorpusInfo(root, root / "metadata.csv", info["n_synthetic"], info["n_dicom"],
                          info["n_dicom_broken"], info["counts"])
    # another corpus: everything built from the old one is stale
    for stale in (root, root.parent / "shards", root.parent / "run", root.parent / "eval"):
        shutil.rmtree(stale, ignore_errors=True)
    info = make_corpus(root, n=n, seed=seed, size=IMAGE_SIZE, progress=progress)
    (root / "corpus.json").write_text(json.dumps({
        "n_synthetic": info.n_synthetic, "n_dicom": info.n_dicom, "n_dicom_broken": info.n_dicom_broken,
        "counts": info.counts}))
    done.write_text(stamp)
    return info


def build_shards(corpus: Path, out: Path, progress: bool) -> dict:
    """`shards build` over the corpus' image folders joined with its metadata.csv; returns the manifest."""
    from launch.demo.synthetic import MODALITIES
    from shards.build import build_shards as build

    manifest = out / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    sources = [str(corpus / m) for m in (*MODALITIES, "dicom") if (corpus / m).is_dir()]
    return build(sources, str(out), name="synthetic", metadata=str(corpus / "metadata.csv"),
                 size=IMAGE_SIZE, upscale=True, workers=2, progress=progress)


def read_rejects(shards: Path) -> list[dict]:
    path = shards / "rejects.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_overrides(run_dir: Path, shards: Path, p: Plan, processes: int, seed: int) -> list[str]:
    """The deltas from the schema that make a tiny CPU run; everything else is the RAD-DINO default."""
    warm = max(1, p.steps // 10)
    return [
        f"output_dir={run_dir}",
        f"data.sources=[{{name: synthetic, path: '{shards}'}}]",
        f"data.batch_size_per_gpu={p.batch_size}",
        "data.num_threads=1",
        "data.device=cpu",
        f"data.seed={seed}",
        f"data.global_crops_size={GLOBAL_CROP}",
        f"data.local_crops_size={LOCAL_CROP}",
        f"data.local_crops_number={p.local_crops}",
        f"model.arch={ARCH}",
        f"model.patch_size={PATCH}",
        "model.drop_path_rate=0.0",
        # image-dependent CLS from step 1: at 1e-5 a from-scratch tiny run's DINO head collapses
        "model.layerscale_init=0.1",
        "model.attn_backend=sdpa",
        "ssl.head_n_prototypes=1024",
        "ssl.head_hidden_dim=512",
        "ssl.head_bottleneck_dim=128",
        f"ssl.warmup_teacher_temp_steps={max(1, p.steps // 3)}",
        f"optim.warmup_steps={warm}",
        f"optim.freeze_last_layer_steps={warm}",
        "optim.lr=0.004",
        f"train.max_steps={p.steps}",
        f"train.seed={seed}",
        "train.device=cpu",
        f"train.log_every={max(1, min(10, p.steps // 50))}",
        # checkpoints along the way let the demo stop at its time budget and still evaluate
        f"train.checkpoint_every={max(5, p.steps // 8)}",
        "train.keep_checkpoints=1",
        "train.export_every=0",
        "parallel.backend=gloo",
        "parallel.mixed_precision=fp32",
        "launch.cluster=local",
        f"launch.tasks_per_node={processes}",
        "launch.cpus_per_task=1",
        "launch.time_minutes=120",
        "launch.run_eval=false",
    ]


def _last_step(metrics: Path) -> int:
    if not metrics.is_file():
        return 0
    from launch.demo.report import read_metrics

    try:
        rows = read_metrics(metrics)
    except ValueError:
        return 0
    return int(rows[-1].get("step", 0)) if rows else 0


def _finished(run_dir: Path, steps: int) -> bool:
    """A previous demo already trained this run to the end (its launcher status says done)."""
    from launch.jobs.runstate import State, read_status

    status = read_status(run_dir) or {}
    return status.get("state") == State.DONE and _last_step(metrics_path(run_dir)) >= steps


@dataclass
class TrainOutcome:
    last_step: int        # last step logged in metrics.jsonl
    checkpoint_step: int  # step of the checkpoint that is evaluated
    stopped_by_budget: bool


def ensure_export(run_dir: Path, checkpoint_step: int) -> Path:
    """`export/latest` of the evaluated checkpoint: the trainer writes it after its last step; a
    run stopped by the budget (or an export interrupted in an earlier demo) gets it here, from the
    checkpoint, with the trainer's own exporter."""
    import filecmp

    from dinotrain.run_layout import export_dir
    from dinotrain.train.export import export_checkpoint

    latest, step = export_dir(run_dir, None) / "dinov2.safetensors", export_dir(run_dir, checkpoint_step)
    # an export cut while it copied to latest/ leaves the step's folder beside an older latest/
    if latest.is_file() and (step / latest.name).is_file() and filecmp.cmp(latest, step / latest.name, shallow=False):
        return latest.parent
    export_checkpoint(run_dir)
    return latest.parent


def collapse_summary(run_dir: Path, metrics: list[dict]) -> str:
    """The trainer's collapse monitor over this run's logged steps (its own lines are in the job's log)."""
    from dinotrain.config import load_config
    from dinotrain.train.monitor import judge_metrics

    cfg = load_config(config_path(run_dir))
    return judge_metrics(metrics, int(cfg.optim.warmup_steps), cfg).summary()


def _checkpoint_step(run_dir: Path) -> int:
    from dinotrain.run_layout import list_checkpoints  # no torch import: the budget check must be quick

    found = list_checkpoints(run_dir)
    return found[-1][0] if found else 0


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2) go to `log` inside the block.

    submitit's local executor starts a controller process that inherits them; cancelling the
    job interrupts that controller (SIGINT), which then prints KeyboardInterrupt tracebacks to
    whatever it inherited. Started inside this block, it writes them to its log file instead,
    beside the tasks' own logs.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with open(log, "ab") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


@contextlib.contextmanager
def interruptible_children() -> Iterator[None]:
    """Processes started inside the block can be interrupted (SIGINT), also when this one ignores it.

    A program started in the background (`cmd &`, nohup) ignores SIGINT, and an ignored signal stays
    ignored across exec: the job's controller would never hear the budget's cancel and training would
    run on past it (seen). A handled signal resets to its default on exec, so handling it here for the
    moment of the start is enough; the previous disposition comes back after.
    """
    import signal

    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if before == signal.SIG_IGN:
            signal.signal(signal.SIGINT, before)


def pretrain(run_dir: Path, overrides: list[str], steps: int, deadline: float | None,
             progress: bool, entry: str | None = None) -> TrainOutcome:
    """Submit the run to the local executor and follow metrics.jsonl until every task ends.

    With a `deadline` (time.monotonic() value) the job is cancelled once it passes while planned
    steps remain and a complete checkpoint exists: the demo then evaluates that checkpoint, so
    `--minutes` is a budget and not a guess. Once the last step is logged the job is left to write
    its final checkpoint and export. A later `dinotrain demo` in the same folder resumes from it.
    `entry`: the training function ('module:function'), the trainer by default.
    """
    from tqdm import tqdm

    from dinotrain.config import load_config
    from launch.jobs.submit import submit_run
    from launch.jobs.task import DEFAULT_ENTRY

    metrics = metrics_path(run_dir)
    if _finished(run_dir, steps):
        return TrainOutcome(_last_step(metrics), _checkpoint_step(run_dir), False)
    cfg = load_config(None, overrides)
    with output_to(run_dir / "jobs" / "controller.log"), interruptible_children():
        job = submit_run(cfg, entry=entry or DEFAULT_ENTRY)
    bar = tqdm(total=steps, desc="pretraining (local executor)", unit="step", disable=not progress)
    cancelled = False
    while not job.done():
        done = _last_step(metrics)
        bar.n = min(steps, done)
        bar.refresh()
        if deadline is not None and not cancelled and time.monotonic() > deadline:
            # the checkpoint first, then the log: the trainer logs a step before it saves it, so a
            # log read last that still misses planned steps means training had not finished
            ckpt = _checkpoint_step(run_dir)
            done = _last_step(metrics)
            if ckpt > 0 and done < steps:
                bar.write(f"time budget spent at step {done} of {steps}: training stopped, its checkpoint of "
                          f"step {ckpt} is evaluated")
                job.cancel()  # SIGINT to the local job's controller (its traceback goes to jobs/controller.log)
                cancelled = True
        time.sleep(1.0)
    bar.n = min(steps, _last_step(metrics))
    bar.close()
    try:
        job.results()
    except Exception as e:
        if cancelled and _checkpoint_step(run_dir) > 0:
            return TrainOutcome(_last_step(metrics), _checkpoint_step(run_dir), True)
        logs = ""
        try:
            logs = (job.stderr() or "")[-3000:]
        except Exception:  # the log may be gone with the job folder; the exception still says why
            pass
        raise RuntimeError(f"pretraining failed: {type(e).__name__}: {e}\n--- job stderr (tail) ---\n{logs}") from e
    return TrainOutcome(_last_step(metrics), _checkpoint_step(run_dir), False)


# (task name, spec, primary probe, primary metric, higher is better)
def eval_specs(dataset: str) -> list[tuple[dict, str, str, bool]]:
    """Probe tasks on the corpus' latent attributes (the synthetic generator's ground truth)."""
    common = {"dataset": dataset}
    return [
        ({**common, "name": "xr_age", "kind": "regression", "label_column": "age",
          "where": {"modality": ["xr_chest"]}, "description": "radiograph: age (via bone density)"},
         "ridge", "r2", True),
        ({**common, "name": "xr_sex", "kind": "classification", "label_column": "sex",
          "where": {"modality": ["xr_chest"]}, "probes": ["linear"], "description": "radiograph: sex (silhouette)"},
         "linear", "auroc", True),
        ({**common, "name": "xr_nodule", "kind": "classification", "label_column": "label",
          "where": {"modality": ["xr_chest"]}, "probes": ["linear"], "description": "radiograph: nodule present"},
         "linear", "auroc", True),
        ({**common, "name": "ct_age", "kind": "regression", "label_column": "age",
          "where": {"modality": ["ct_chest"]}, "description": "CT: age (via vertebra density)"},
         "ridge", "r2", True),
        ({**common, "name": "us_lesion", "kind": "classification", "label_column": "label",
          "where": {"modality": ["us_breast"]}, "probes": ["linear"],
          "description": "ultrasound: normal / benign / malignant"},
         "linear", "auroc", True),
        ({**common, "name": "modality", "kind": "classification", "label_column": "modality",
          "exclude": {"modality": ["dicom"]}, "probes": ["knn"], "description": "which modality (kNN)"},
         "knn", "auroc", True),
    ]


def write_task_specs(folder: Path, dataset: str, seed: int) -> list[str]:
    """The demo's task specs as YAML files (the format `dinotrain eval --tasks` reads)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec, *_ in eval_specs(dataset):
        path = folder / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump({**spec, "seed": seed}, sort_keys=False))
        paths.append(str(path))
    return paths


def evaluate(models: list[str], data_root: Path, dataset: str, out: Path, seed: int, progress: bool) -> list[dict]:
    """Records of `dinotrain.eval.run.evaluate_models` for every model on every demo task."""
    from dinotrain.eval.run import evaluate_models

    tasks = write_task_specs(out / "tasks", dataset, seed)
    res = evaluate_models(models, tasks, data_root, out, resolution=EVAL_RESOLUTION, batch_size=32,
                          bootstrap=200, seed=seed, device="cpu", progress=progress)
    return res["records"]


def probe_rows(records: list[dict], ssl: str, random: str):
    """The primary metric of each task, model `ssl` vs model `random`, as report.ProbeRow."""
    from launch.demo.report import ProbeRow

    rows = []
    for spec, probe, metric, higher in eval_specs("-"):
        pick = {r["model"]: r for r in records
                if r["task"] == spec["name"] and r["kind"] == probe and r["metric"] == metric}
        if ssl not in pick or random not in pick:
            continue
        s, r = pick[ssl], pick[random]

        def ci(x):
            lo, hi = x.get("ci_low"), x.get("ci_high")
            ok = lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
            return (lo, hi) if ok else None

        rows.append(ProbeRow(spec["name"], f"{probe} {metric}", s["value"], r["value"], ci(s), ci(r),
                             higher, spec.get("description", "")))
    return rows


def sample_images(shards: Path, corpus_counts: dict, limit: int = 12) -> list[tuple[str, Any]]:
    """A few samples as stored in the shards (what the loader decodes), one or more per modality."""
    import io

    import numpy as np
    from PIL import Image

    picked: dict[str, list] = {}
    per = max(1, limit // max(1, len(corpus_counts)))
    for tar in sorted(shards.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name, m in members.items():
                if not name.endswith(".png"):
                    continue
                meta_name = name[: -len(".png")] + ".json"
                meta = json.loads(tf.extractfile(members[meta_name]).read()) if meta_name in members else {}
                modality = str(meta.get("modality") or "?")
                if len(picked.setdefault(modality, [])) >= per:
                    continue
                arr = np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())))
                title = modality + (f" {meta.get('sex', '')} {meta.get('age', '')}" if meta.get("age") else "")
                picked[modality].append((title.strip(), arr))
    return [x for v in picked.values() for x in v][:limit]


def training_crops(overrides: list[str], out: Path) -> Path:
    """One batch of the real training loader (DALI multi-crop + iBOT masks) as a picture."""
    from dinotrain.config import load_config
    from dinotrain.data import build_train_loader
    from dinotrain.data.cli import crops_image

    cfg = load_config(None, overrides)
    loader = build_train_loader(cfg)
    try:
        batch = next(loader)
    finally:
        loader.close()
    crops_image([batch], int(cfg.model.patch_size), cfg.data.mean, cfg.data.std).save(out)
    return out


# ----------------------------------------------------------------------------- the whole chain
def _pretrain_stage(out: Path, run_dir: Path, p: Plan, opts: DemoOptions, deadline: float | None):
    """Stage 3: train (or resume, or reuse), export the evaluated checkpoint, say what happened.
    Returns (overrides, outcome, metrics rows, (first, last) total loss)."""
    from launch.demo import report

    overrides = train_overrides(run_dir, out / "shards", p, opts.processes, opts.seed)
    plan_file = out / "train_overrides.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != overrides:
        # another model/batch/process count: resuming the old run would mix two set-ups
        shutil.rmtree(run_dir, ignore_errors=True)
    plan_file.write_text(json.dumps(overrides, indent=1))
    outcome = pretrain(run_dir, overrides, p.steps, deadline, opts.progress)
    metrics = report.read_metrics(metrics_path(run_dir))
    series = report.loss_series(metrics)
    total = series.get("total_loss") or series.get("loss") or next(iter(series.values()), None)
    first, last = (float(total[1][0]), float(total[1][-1])) if total is not None else (None, None)
    stop = (f", stopped by the {opts.minutes:g}-minute budget at step {outcome.last_step}"
            if outcome.stopped_by_budget else "")
    export = ensure_export(run_dir, outcome.checkpoint_step)
    print(f"[3/4] pretraining: {outcome.last_step} of {p.steps} steps{stop}; total loss "
          f"{_num(first)} -> {_num(last)}; evaluating the checkpoint of step {outcome.checkpoint_step} "
          f"(teacher exported to {export}); {collapse_summary(run_dir, metrics)}")
    return overrides, outcome, metrics, (first, last)


def run_demo(opts: DemoOptions) -> int:
    from launch.demo import report

    out = Path(opts.out).absolute()
    if opts.fresh and out.exists():
        for sub in ("corpus", "shards", "run", "eval"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    p = plan(opts.minutes, opts.steps, opts.images)
    t0 = time.perf_counter()
    # with an explicit --steps the user asked for exactly that many: no budget cut
    deadline = None if opts.steps is not None else time.monotonic() + opts.minutes * 60.0 - AFTER_TRAINING_S
    say = print
    say(f"dinotrain demo: {p.images} SYNTHETIC images, {p.steps} steps of {ARCH} on {opts.processes} CPU processes "
        f"-> {out}")

    corpus = build_corpus(out / "corpus", p.images, opts.seed, opts.progress)
    say(f"[1/4] corpus: {corpus.counts} (+{corpus.n_dicom_broken} deliberately broken DICOMs)")

    manifest = build_shards(out / "corpus", out / "shards", opts.progress)
    rejects = read_rejects(out / "shards")
    totals = manifest.get("totals", {})
    say(f"[2/4] shards: {totals.get('samples', '?')} samples in {len(manifest.get('shards', []))} shard(s) "
        f"{manifest.get('modalities', {})}; {totals.get('rejected', len(rejects))} input(s) rejected "
        f"{manifest.get('reject_reasons', {})} (see {out / 'shards' / 'rejects.jsonl'})")

    run_dir = out / "run"
    overrides, outcome, metrics, (first, last) = _pretrain_stage(out, run_dir, p, opts, deadline)

    from dinotrain.eval.loading import describe_random

    # the baseline is the network this run started from (its recipe and seed), not the schema's init
    ssl, random = str(run_dir), f"random:{run_dir}"
    baseline = describe_random(random)
    records = evaluate([ssl, random], out, "corpus", out / "eval", opts.seed, opts.progress)
    rows = probe_rows(records, ssl, random)
    (out / "results.json").write_text(json.dumps({"plan": p.__dict__, "records": records, "baseline": baseline,
                                                   "rejects": rejects}, indent=2, default=str))
    say("[4/4] frozen-feature probes on the latent attributes (test split):\n")
    say(report.format_table(rows, baseline))
    plots = [
        report.plot_losses(metrics, out / "loss_curves.png"),
        report.plot_probes(rows, out / "probes.png"),
    ]
    plots.append(training_crops(overrides, out / "training_crops.png"))
    samples = sample_images(out / "shards", corpus.counts)
    if samples:
        plots.append(report.plot_images(samples, out / "samples.png", title="samples as stored in the shards (synthetic)"))
    text = report.explain(rows, outcome.last_step, first, last, outcome.checkpoint_step, baseline)
    (out / "REPORT.md").write_text(
        "# dinotrain demo (synthetic data)\n\n" + "```\n" + report.format_table(rows, baseline) + "\n```\n\n"
        + text + "\n\n"
        + "\n".join(f"![{q.stem}]({q.name})" for q in plots) + "\n"
    )
    say("\n" + text + "\n")
    say(f"plots: {', '.join(str(q) for q in plots)}; report: {out / 'REPORT.md'} "
        f"({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0
