"""`dinotrain curate SHARDS... --out DIR`: near-duplicates (also against eval test sets), balanced sampling,
and a selection file the training loader filters a source by (`data.sources[i].selection=DIR/selection.json`)."""

from __future__ import annotations

import argparse
import os


def _ints(text: str) -> list[int]:
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': give cluster counts like 500,50,10") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': give positive cluster counts like 500,50,10")
    return ks


def _part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': give I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"'{text}': give I/N with 0 <= I < N")
    return i, n


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dinotrain.curate.run import DEFAULT_THRESHOLD, CurateOptions

    d = CurateOptions([], "")
    p.add_argument("shards", nargs="+", metavar="SHARDS", help="shard folders (outputs of `dinotrain shards build`)")
    p.add_argument("--out", help="folder for selection.json, groups.jsonl, report.md/json, *.png (not with --embed-only)")
    p.add_argument("--encoder", default=d.encoder,
                   help="'pixels' (multi-zoom thumbnails, default), a run folder, an export, a Hugging Face Dinov2 "
                        "folder, a checkpoint or random:ARCH")
    p.add_argument("--resolution", type=int, default=d.resolution, help="model input side (model encoders)")
    p.add_argument("--cache", help="embedding cache folder (default: SHARDS/curate; required for s3:// shards)")
    p.add_argument("--threshold", type=float,
                   help=f"cosine at or above which two images are near-duplicates (default for pixels: "
                        f"{DEFAULT_THRESHOLD['pixels']}; required for model encoders)")
    p.add_argument("--keep", choices=("first", "central"), default=d.keep,
                   help="which member of a duplicate group stays: the first (order of SHARDS, then manifest) "
                        "or the most central")
    p.add_argument("--against", action="append", default=[], metavar="TASK_OR_SHARDS",
                   help="drop pretraining samples that near-duplicate this eval task's test split (e.g. jsrt_nodule) "
                        "or this shard folder's images; repeatable")
    p.add_argument("--data", default=os.environ.get("DINOTRAIN_TEST_DATA"),
                   help="folder of the eval datasets for --against TASK (default: $DINOTRAIN_TEST_DATA)")
    p.add_argument("--target", type=int, help="balanced sampling: keep this many samples (default: no sampling)")
    p.add_argument("--levels", type=_ints, default=d.levels,
                   help="hierarchical k-means cluster counts from the leaves up (default: 100,10)")
    p.add_argument("--strategy", choices=("random", "closest"), default=d.strategy,
                   help="which samples a leaf cluster gives: random, or closest to its centroid")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of k-means and sampling")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for decoding and the model")
    p.add_argument("--device", default=d.device, help="where a model encoder runs (cpu, cuda)")
    p.add_argument("--search", choices=("auto", "torch", "faiss"), default=d.search,
                   help="exact pair search: faiss (faiss-cpu) where installed, else torch; same pairs either way")
    p.add_argument("--embed-only", action="store_true",
                   help="only fill the embedding cache (one task of a multi-process run), write no selection")
    p.add_argument("--part", type=_part, metavar="I/N",
                   help="with --embed-only: shards k with k %% N == I, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    p.add_argument("--sheet-rows", type=int, default=d.sheet_rows, help="rows of each contact sheet")


def main(args: argparse.Namespace) -> int:
    import sys

    from dinotrain.curate.run import CurateError, CurateOptions, run

    if args.part and not args.embed_only:
        raise CurateError("--part I/N splits the embedding only: add --embed-only, then run once without both")
    if not args.out and not args.embed_only:
        raise CurateError("give --out FOLDER for the selection and report")
    opts = CurateOptions(shards=args.shards, out=args.out, encoder=args.encoder, resolution=args.resolution,
                         cache=args.cache, threshold=args.threshold, keep=args.keep, against=args.against,
                         data=args.data, target=args.target, levels=args.levels, strategy=args.strategy,
                         seed=args.seed, threads=args.threads, device=args.device, sheet_rows=args.sheet_rows,
                         part=args.part, embed_only=args.embed_only, search=args.search)
    if args.embed_only:
        from dinotrain.curate.run import embed_part

        embed_part(opts, log=lambda m: print(m, file=sys.stderr))
        return 0
    run(opts, command="dinotrain curate " + " ".join(sys.argv[2:]), log=lambda m: print(m, file=sys.stderr))
    return 0
