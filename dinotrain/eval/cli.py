"""`dinotrain eval MODEL... --tasks TASKS [--data ROOT] [--out DIR]`.

MODEL: a run directory, a Hugging Face folder, a DINOv2 checkpoint, `random:RUN_DIR` or `random:vit_small` (see
`dinotrain.eval.loading`). TASKS: built-in spec names, YAML paths, or `all`, comma-separated
(see `dinotrain.eval.specs`). The settings' flags are generated from the config schema's `eval`
section (help, choices and defaults in its fields' metadata), so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from dinotrain.config import EvalConfig, default_of


def _flag_type(hint: typing.Any) -> type:
    """argparse's `type` for a field: Optional[X] -> X; a list is given comma-separated."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return str
    if args:
        return args[0]
    return hint


def add_schema_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `EvalConfig` field: --FIELD-NAME (or the field's `cli.flag`), dest FIELD_NAME."""
    hints = typing.get_type_hints(EvalConfig)
    for f in dataclasses.fields(EvalConfig):
        cli = dict(f.metadata.get("cli", {}))
        flag = cli.pop("flag", "--" + f.name.replace("_", "-"))
        kw: dict[str, typing.Any] = {"dest": f.name, "default": default_of(EvalConfig, f.name),
                                     "help": f.metadata["help"]}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        kw.update(cli)
        kw["help"] = kw["help"].replace("%", "%%")  # argparse formats help with %
        typ = _flag_type(hints[f.name])
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typ is not str:
            kw["type"] = typ
        parser.add_argument(flag, **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="run dir, HF folder, DINOv2 checkpoint, random:RUN_DIR or random:CONFIG.yaml (the network that "
                        "run starts from), or random:ARCH[:SEED] (the schema's init); several = side by side")
    add_schema_arguments(parser)
    parser.add_argument("--out", default="eval_out", help="output folder for results.json, results.md, results.png")
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
    if not args.data_root:
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
        cfg = EvalConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig) if f.name != "tasks"})
        res = evaluate_models(args.models, args.tasks, args.data_root, args.out, eval_cfg=cfg, with_plot=not args.no_plot,
                              progress=not args.no_progress, compare_to=args.compare_to)
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
