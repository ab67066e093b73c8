"""`dinotrain eval MODEL... --tasks TASKS [--data ROOT] [--out DIR]`.

MODEL: a run directory, a Hugging Face folder, a DINOv2 checkpoint, `random:RUN_DIR` or `random:vit_small` (see
`dinotrain.eval.loading`). TASKS: built-in spec names, YAML paths, or `all`, comma-separated
(see `dinotrain.eval.specs`). Defaults come from the config schema's `eval` section.
"""

from __future__ import annotations

import argparse
import sys

from dinotrain.config import EvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = EvalConfig()
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="run dir, HF folder, DINOv2 checkpoint, random:RUN_DIR or random:CONFIG.yaml (the network that "
                        "run starts from), or random:ARCH[:SEED] (the schema's init); several = side by side")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated built-in task names or YAML spec paths, or 'all' (see --list-tasks)")
    parser.add_argument("--data", default=d.data_root, help="root folder holding the datasets the specs name")
    parser.add_argument("--out", default="eval_out", help="output folder for results.json, results.md, results.png")
    parser.add_argument("--resolution", type=int, default=None,
                        help="input size (resize + centre crop); default: the global crop size a run MODEL trained "
                        f"at, else {d.resolution} (RAD-DINO's)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="feature extraction batch size")
    parser.add_argument("--max-samples", type=int, default=d.max_samples, help="stratified subset per task")
    parser.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap resamples for 95%% CIs")
    parser.add_argument("--knn-k", type=int, default=d.knn_k, help="k of the kNN classifier")
    parser.add_argument("--seg-steps", type=int, default=d.seg_steps, help="segmentation head training steps")
    parser.add_argument("--align-steps", type=int, default=d.align_steps, help="text alignment training steps")
    parser.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="CPU threads for torch (0 = default; 1 is fastest on a busy shared machine)")
    parser.add_argument("--loader", default=d.loader, choices=("plain", "dali"),
                        help="preprocessing: plain PIL + numpy, or the DALI eval loader (same recipe)")
    parser.add_argument("--cache-dir", default=d.cache_dir, help="feature cache (default: OUT/cache)")
    parser.add_argument("--compare-to", default=None, metavar="MODEL",
                        help="one of the MODELs: also write paired.json, each other model minus this one per "
                        "metric with a paired bootstrap 95%% CI (the same resampled test items for both)")
    parser.add_argument("--no-plot", action="store_true", help="skip results.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--list-tasks", action="store_true", help="print the built-in tasks and exit")


def main(args: argparse.Namespace) -> int:
    from dinotrain.eval.specs import SpecError, builtin_names, load_spec

    if args.list_tasks:
        for n in builtin_names():
            s = load_spec(n)
            print(f"{n:24s} {s.kind:15s} {s.dataset:24s} {s.description}")
        return 0
    if not args.models or not args.tasks:
        print("dinotrain eval: error: give at least one MODEL and --tasks (try --list-tasks)", file=sys.stderr)
        return 2
    if not args.data:
        print("dinotrain eval: error: --data ROOT is required (the folder holding jsrt/, covid_cxr/ ...)",
              file=sys.stderr)
        return 2
    from pathlib import Path

    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"dinotrain eval: error: --out {args.out} is a file: give a folder (it is created)", file=sys.stderr)
        return 2
    from dinotrain.eval.loading import default_resolution, describe_random
    from dinotrain.eval.run import evaluate_models

    if args.resolution is None:
        args.resolution, why = default_resolution(list(args.models))
        print(f"dinotrain eval: at {args.resolution} px, {why} (--resolution to change)", file=sys.stderr, flush=True)
    else:
        print(f"dinotrain eval: at {args.resolution} px (--resolution)", file=sys.stderr, flush=True)
    try:
        inits = {m: describe_random(m) for m in args.models}  # which init each random: model is
        res = evaluate_models(
            args.models, args.tasks, args.data, args.out, max_samples=args.max_samples, with_plot=not args.no_plot,
            resolution=args.resolution, batch_size=args.batch_size, bootstrap=args.bootstrap, knn_k=args.knn_k,
            seg_steps=args.seg_steps, align_steps=args.align_steps, device=args.device,
            cache_dir=args.cache_dir, progress=not args.no_progress, threads=args.threads,
            loader=args.loader, compare_to=args.compare_to,
        )
    except SpecError as e:
        print(f"dinotrain eval: error: {e}", file=sys.stderr)
        return 2
    from dinotrain.eval.report import markdown

    print(markdown(list(args.models), [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                                       for r in res["records"]]))
    for m, what in inits.items():
        if what:
            print(f"{m}: {what}")
    print(f"wrote {', '.join(str(p) for p in res['paths'].values())}")
    return 0
