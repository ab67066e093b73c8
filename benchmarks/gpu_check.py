"""GPU check: one run proves what the machine has of the GPU path (DALI mixed or the torch loader,
xformers or SDPA, bf16/fp16 FSDP2, activation checkpointing, compile, DCP resume, MFU).

Sections (in this order; `--only` / `--skip` pick some); each declares the packages it needs
(NEEDS): on a machine without one the section is skipped, with the reason in the JSON and the
summary, and the others run:
  dali         [nvidia.dali] DALI `mixed` decode and the multi-crop graph vs the CPU graph on the same
               bytes and crop parameters (max difference), for PNG and J2K shards, J2K vs PNG (exact)
  attention    xformers (when importable) or SDPA's packed block-diagonal layout vs plain SDPA on a
               packed multi-crop pass: outputs and gradients, fp32 and bf16
  decode_rate  [nvidia.dali] decode images/s per GPU: PNG (CPU inside `mixed`) vs J2K (nvJPEG2000)
  loader       the training loader's images/s: the torch backend (Pillow workers + torch ops on the
               GPU), and DALI on the GPU when importable
  resume       exact DCP resume on the GPU: N steps straight vs N/2, checkpoint, resume to N (losses)
  train        FSDP2 steps of each --archs (default ViT-S/B/L, 224 px crops) in bf16, fp16 (loss
               scaling), bf16 + activation checkpointing, and bf16 + torch.compile: images/s, MFU
               (model FLOPs from the config), peak memory, step split; the loader's images/s against
               the step's consumption; losses vs the bf16 run (same init and batches)
Writes OUT/gpu_check.json (schema: benchmarks/gpu/report.py) and prints its tables. Exit status:
0 every check that ran passes (skipped sections do not count), 1 a numerical mismatch, 2 no GPU or
a missing base package, 3 a section failed. Sections past --budget-s are recorded as skipped, so a
run always ends with its JSON. `--device cpu` runs the same plumbing on the CPU (CI; no figures).
`bash benchmarks/gpu_check.sh` runs it on a GPU machine; tests/test_gpu_check.py runs the CPU halves.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import Skip, machine, ratio_row, result
from benchmarks.gpu import report

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("dali", "attention", "decode_rate", "loader", "resume", "train")
# what the GPU half may differ from the reference half by (units in each check's row); --tol NAME=VALUE
TOLERANCES = {
    "dali_decode": 0.0,  # uint16 levels: lossless decode is exact on both sides
    "dali_crops": 1e-2,  # normalised pixels: two resize/blur implementations round differently
    "dali_codecs": 0.0,  # J2K vs PNG crops on the GPU: the same pixels go through the same graph
    "attn_fp32_out": 2e-3, "attn_fp32_grad": 1e-2,  # relative to the largest value
    "attn_bf16_out": 5e-2, "attn_bf16_grad": 1e-1,
    "train_nonfinite": 0,  # non-finite losses per run
    "loss_fp16": 2e-2, "loss_ac": 1e-2, "loss_compile": 2e-2,  # relative, first 3 steps vs the bf16 run
    "resume": 1e-3,  # relative, the steps after the resume (deterministic kernels, SDPA)
}
REQUIRED = ("omegaconf", "fsspec", "tqdm", "PIL", "numpy")  # every section: the project itself imports them
NEEDS = {"dali": ("nvidia.dali",), "attention": (), "decode_rate": ("nvidia.dali",), "loader": (), "resume": (),
         "train": ()}


def missing_packages(names) -> list[str]:
    """The modules of `names` that do not import here, each with why ('nvidia.dali (No module named ...)')."""
    import importlib

    out = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            out.append(f"{name} ({e})")
    return out


@dataclass
class Context:
    args: argparse.Namespace
    tol: dict
    work: Path
    device: str = "gpu"  # or "cpu": --device cpu
    sets: dict = field(default_factory=dict)  # codec -> shard folder
    encoded: dict = field(default_factory=dict)  # codec -> list of encoded images
    train: dict = field(default_factory=dict)  # case name -> summary
    loader: dict = field(default_factory=dict)  # "codec, backend" -> images/s
    train_set: str = "png"  # the shard set training reads: J2K when DALI decodes it on the GPU, else PNG
    save: Callable[[list, list], None] = lambda checks, ms: None  # writes the JSON with a section's partial results


def _tolerance(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in TOLERANCES:
        raise argparse.ArgumentTypeError(f"unknown tolerance {name!r} (known: {', '.join(TOLERANCES)})")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tol {text!r}: write NAME=NUMBER, e.g. dali_crops=0.02") from None


def _names(text: str, allowed, what: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    bad = [s for s in names if s not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown {what}(s) {', '.join(bad) or '(none)'}: choose from {', '.join(allowed)}")
    return names


def _sections(text: str) -> list[str]:
    return _names(text, SECTIONS, "section")


def _archs(text: str) -> list[str]:
    from dinotrain.models.vit import ARCHS

    return _names(text, ARCHS, "arch")


def _default_data() -> Path | None:
    p = REPO.parent / "shared" / "data" / "jsrt"
    return p if p.is_dir() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out", help="folder of gpu_check.json")
    ap.add_argument("--data", type=Path, default=_default_data(), help="folder with images/ (+ metadata.csv); "
                    "default ../shared/data/jsrt, else generated images")
    ap.add_argument("--images", type=int, default=256, help="images in the PNG and J2K shard sets")
    ap.add_argument("--steps", type=int, default=20, help="steps per training case (the first 5 are warm-up)")
    ap.add_argument("--batch", type=int, default=40, help="images per GPU (RAD-DINO: 40)")
    ap.add_argument("--archs", type=_archs, default=["vit_small", "vit_base", "vit_large"], help="comma-separated")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: run the sections' plumbing on the CPU (CI; the figures mean nothing)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile case")
    ap.add_argument("--only", type=_sections, default=list(SECTIONS), help="comma-separated sections")
    ap.add_argument("--skip", type=_sections, default=[], help="comma-separated sections")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no section or case after this")
    ap.add_argument("--tol", type=_tolerance, action="append", default=[], metavar="NAME=VALUE",
                    help=f"override a tolerance ({', '.join(TOLERANCES)})")
    args = ap.parse_args(argv)
    if args.steps < 6:
        ap.error(f"--steps {args.steps}: use at least 6 (5 warm-up steps, then figures)")
    if args.batch < 1 or args.images < args.batch:
        ap.error(f"--batch {args.batch} / --images {args.images}: need 1 <= batch <= images")
    args.sections = [s for s in args.only if s not in args.skip]
    return args


def preflight(device: str = "cuda") -> str | None:
    """Why this machine cannot run the check at all (None when it can; a section's own packages are
    checked when it starts)."""
    missing = missing_packages(REQUIRED)
    if missing:
        return (f"missing Python packages: {', '.join(missing)}: install the project's dependencies "
                "or put their wheels in .whl/ for gpu_check.sh (README: GPU check)")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return f"needs a CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)"
    return None


# ----------------------------------------------------------------------------- sections
def sec_dali(ctx: Context) -> tuple[list, list]:
    from benchmarks.gpu import decode as D
    from dinotrain.config import load_config

    data_cfg = load_config(None, ["data.channels=3"]).data
    checks, ms, crops = [], [], {}
    for codec, enc in ctx.encoded.items():
        sample = enc[: min(8, len(enc))]
        ref, got = D.decode(sample, "cpu"), D.decode(sample, "gpu")
        checks.append(report.check("dali", f"{codec}: mixed decode vs CPU decode", D.max_abs_diff(ref, got),
                                   ctx.tol["dali_decode"], "uint16 levels", f"{len(sample)} images"))
        params = D.crop_params(sample, data_cfg, seed=1)
        ref_c, got_c = D.multicrop(sample, params, data_cfg, "cpu"), D.multicrop(sample, params, data_cfg, "gpu")
        crops[codec] = got_c
        checks.append(report.check("dali", f"{codec}: GPU multi-crop vs CPU graph", D.max_abs_diff(ref_c, got_c),
                                   ctx.tol["dali_crops"], "normalised", "2 global + 8 local crops, same parameters"))
    if set(crops) >= {"png", "j2k"}:
        checks.append(report.check("dali", "GPU crops: J2K shards vs PNG shards", D.max_abs_diff(crops["png"], crops["j2k"]),
                                   ctx.tol["dali_codecs"], "normalised", "same images, nvJPEG2000 vs PNG decode"))
    return checks, ms


def sec_attention(ctx: Context) -> tuple[list, list]:
    import torch

    from benchmarks.gpu.attention import compare
    from dinotrain.models.attention import xformers_available

    checks, ms = [], []
    candidate = "xformers"
    if not xformers_available():
        # still check the packed layout on the GPU, through SDPA with the dense block-diagonal mask
        checks.append(report.note("attention", "xformers vs SDPA", "skipped", "xformers is not importable"))
        candidate = "sdpa_dense"
    for dtype, key in ((None, "fp32"), (torch.bfloat16, "bf16")):
        r = compare(ctx.args.archs[0], ctx.device, candidate, dtype)
        checks.append(report.check("attention", f"{candidate} vs sdpa, {key} outputs", r["output_rel_diff"],
                                   ctx.tol[f"attn_{key}_out"], "relative", f"{r['arch']}, {r['crops']}"))
        checks.append(report.check("attention", f"{candidate} vs sdpa, {key} gradients", r["grad_rel_diff"],
                                   ctx.tol[f"attn_{key}_grad"], "relative",
                                   f"worst: {r['worst_grad_param']}, {r['params_with_grad']} params"))
        ms.append(report.measurement("attention", f"{r['arch']} {key}", **{k: v for k, v in r.items() if k != "arch"}))
    return checks, ms


def sec_decode_rate(ctx: Context) -> tuple[list, list]:
    from benchmarks.gpu.decode import decode_rate

    ms = []
    for codec, enc in ctx.encoded.items():
        for device in ("gpu", "cpu"):
            r = decode_rate(enc, device, ctx.args.batch, seconds=4.0)
            where = "GPU (mixed)" if device == "gpu" else "CPU"
            ms.append(report.measurement("decode_rate", f"{codec} on {where}", **r))
    return [], ms


def sec_loader(ctx: Context) -> tuple[list, list]:
    """The torch backend on every shard set; DALI too when it imports (else a skipped note)."""
    from benchmarks.gpu.training import loader_rate

    checks, ms = [], []
    dali_missing = missing_packages(NEEDS["dali"])
    where = "GPU" if ctx.device == "gpu" else "CPU"
    for backend in ("torch", "dali"):
        if backend == "dali" and dali_missing:
            checks.append(report.note("loader", "DALI loader", "skipped", f"needs {', '.join(dali_missing)}"))
            continue
        for codec, folder in ctx.sets.items():
            gpu = ctx.device == "gpu"
            r = loader_rate(folder, ctx.args.batch, ctx.device, batches=20 if gpu else 2, threads=8 if gpu else 1,
                            backend=backend)
            ctx.loader[f"{codec}, {backend}"] = r["images_per_s"]
            ms.append(report.measurement("loader", f"{codec} shards, {backend} on {where}", **r))
    return checks, ms


def sec_resume(ctx: Context) -> tuple[list, list]:
    from benchmarks.gpu.training import resume_check

    r = resume_check(ctx.sets[ctx.train_set], ctx.work / "resume", 6, 8, ctx.device, ctx.args.archs[0])
    detail = f"{r['arch']}, steps {r['resumed_at'] + 1}-{r['steps']} after a resume; bitwise equal: {r['bitwise_equal']}"
    return ([report.check("resume", "losses after resume vs straight run", r["rel_diff"], ctx.tol["resume"],
                          "relative", detail)],
            [report.measurement("resume", r["arch"], **r)])


def _train_case(ctx: Context, case) -> tuple[list, list]:
    from benchmarks.gpu.training import loss_rel_diff, run_case

    r = run_case(case, ctx.sets[ctx.train_set], ctx.work / "train", ctx.args.steps, ctx.args.batch, ctx.device)
    ctx.train[case.name] = r
    bad = sum(1 for x in r["losses"] if x != x or abs(x) == float("inf"))
    checks = [report.check("train", f"{case.name}: non-finite losses", bad, ctx.tol["train_nonfinite"], "steps",
                           f"{r['steps']} steps")]
    if case.reference in ctx.train:
        key = {"fp16": "loss_fp16"}.get(case.precision, "loss_compile" if case.compile else "loss_ac")
        diff = loss_rel_diff(ctx.train[case.reference]["losses"], r["losses"], 3)
        checks.append(report.check("train", f"{case.name}: losses vs {case.reference}", diff, ctx.tol[key],
                                   "relative", "first 3 steps, same init and batches"))
    return checks, [report.measurement("train", case.name, **r)]


def sec_train(ctx: Context, deadline: float) -> tuple[list, list]:
    """Each case in turn (one failing case, e.g. out of memory, does not stop the others)."""
    from benchmarks.gpu.training import cases

    checks, ms = [], []
    for case in cases(ctx.args.archs, not ctx.args.no_compile):
        if time.monotonic() > deadline:
            checks.append(report.note("train", case.name, "skipped", "past --budget-s"))
            continue
        try:
            c, m = _train_case(ctx, case)
        except Exception as e:  # noqa: BLE001 - recorded as this case's error
            traceback.print_exc()
            c, m = [report.note("train", case.name, "error", f"{type(e).__name__}: {str(e)[:300]}")], []
        checks += c
        ms += m
        ctx.save(checks, ms)  # a run killed during a later case keeps this one's figures
    for name, r in ctx.train.items():
        for codec, ips in ctx.loader.items():
            if r.get("images_per_s") and name.endswith("bf16"):  # the plain run of each arch
                ms.append(report.measurement("train", f"{name}: loader ({codec}) / step consumption",
                                             loader_images_per_s=ips, step_images_per_s=r["images_per_s"],
                                             margin=ips / r["images_per_s"]))
    return checks, ms


# ----------------------------------------------------------------------------- driver
def prepare(ctx: Context) -> list:
    from benchmarks.gpu.data import build_sets, encoded_samples, input_files

    files, meta, origin = input_files(ctx.args.data, ctx.work, ctx.args.images)
    built = build_sets(files, meta, ctx.work, workers=8)
    ctx.sets = {c: folder for c, (folder, _) in built.items()}
    ctx.encoded = {c: encoded_samples(folder, ctx.args.images) for c, folder in ctx.sets.items()}
    return [report.measurement("shards", f"{c} build", seconds=s, images=len(files), origin=origin,
                               bytes=sum(len(b) for b in ctx.encoded[c])) for c, (_, s) in built.items()]


def document(args, checks: list, ms: list, t0: float) -> dict:
    status = report.exit_status(checks)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "tol"}
    params["tolerances"] = {**TOLERANCES, **dict(args.tol)}
    return {"schema": report.SCHEMA, "ok": status == report.EXIT_OK, "exit_status": status,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": time.perf_counter() - t0, "machine": machine(), "params": params,
            "checks": checks, "measurements": ms}


def write(doc: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_check.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def run_check(args: argparse.Namespace) -> dict:
    """Every selected section; the JSON is rewritten after each, so a killed run leaves what it had."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + args.budget_s
    ctx = Context(args, {**TOLERANCES, **dict(args.tol)}, Path(tempfile.mkdtemp(prefix="gpu_check_")),
                  device="gpu" if args.device == "cuda" else "cpu",
                  train_set="png" if missing_packages(NEEDS["dali"]) else "j2k")
    checks, ms = [], prepare(ctx)
    ctx.save = lambda c, m: write(document(args, checks + c, ms + m, t0), args.out)
    runners = {"dali": sec_dali, "attention": sec_attention, "decode_rate": sec_decode_rate, "loader": sec_loader,
               "resume": sec_resume, "train": lambda c: sec_train(c, deadline)}
    for name in args.sections:
        if time.monotonic() > deadline:
            checks.append(report.note(name, name, "skipped", f"past --budget-s {args.budget_s:g}"))
            continue
        missing = missing_packages(NEEDS[name])
        if missing:
            checks.append(report.note(name, name, "skipped", f"needs {', '.join(missing)}"))
            print(f"gpu_check: {name} skipped: needs {', '.join(missing)}", file=sys.stderr, flush=True)
            continue
        t = time.perf_counter()
        try:
            c, m = runners[name](ctx)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others' figures
            traceback.print_exc()
            c, m = [report.note(name, name, "error", f"{type(e).__name__}: {str(e)[:300]}")], []
        checks += c
        ms += m
        print(f"gpu_check: {name} done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        write(document(args, checks, ms, t0), args.out)
    doc = document(args, checks, ms, t0)
    write(doc, args.out)
    return doc


def run(quick: bool = False) -> dict:
    """Entry of `python -m benchmarks`: skipped without a GPU; the ratio rows of a full check."""
    why = preflight()
    if why:
        raise Skip(why)
    args = parse_args(["--steps", "8", "--archs", "vit_base", "--no-compile"] if quick else [])
    doc = run_check(args)
    rows = []
    rates = {m["case"]: m["values"]["images_per_s"] for m in doc["measurements"] if m["section"] == "decode_rate"}
    if "png on GPU (mixed)" in rates and "j2k on GPU (mixed)" in rates:
        rows.append(ratio_row("decode per GPU: J2K (nvJPEG2000) vs PNG (CPU inside mixed)", rates["png on GPU (mixed)"],
                              rates["j2k on GPU (mixed)"], baseline_name="PNG", candidate_name="J2K", unit="img/s",
                              higher_is_better=True))
    base = next((m for m in doc["measurements"] if m["section"] == "train" and m["case"].endswith("bf16")), None)
    for m in doc["measurements"]:
        if m["section"] == "train" and "images_per_s" in m["values"] and base is not None and m is not base:
            rows.append(ratio_row(f"{m['case']} vs {base['case']}", base["values"]["images_per_s"],
                                  m["values"]["images_per_s"], baseline_name=base["case"], candidate_name=m["case"],
                                  unit="img/s", higher_is_better=True))
    failed = [c for c in doc["checks"] if c["status"] in ("mismatch", "error")]
    notes = "All checks pass." if not failed else "FAILED: " + "; ".join(f"{c['name']} ({c['status']})" for c in failed)
    return result("gpu_check", "the GPU path in one run (DALI mixed, xformers, FSDP2 bf16/fp16, AC, compile)", rows,
                  notes=notes, params={"checks": doc["checks"]})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = preflight(args.device)
    if why:
        print(f"gpu_check: {why}", file=sys.stderr)
        return report.EXIT_UNAVAILABLE
    doc = run_check(args)
    print(report.tables(doc))
    skipped = [f"{c['section']}: {c['name']} ({c['detail']})" for c in doc["checks"] if c["status"] == "skipped"]
    if skipped:
        print("\ngpu_check: skipped " + "; ".join(skipped))
    print(f"\ngpu_check: {'OK' if doc['ok'] else 'FAILED'} (exit {doc['exit_status']}), wrote {args.out / 'gpu_check.json'}")
    return doc["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
