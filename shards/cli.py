"""`dinotrain shards build|verify|inspect`: argument parsing only; the work is in build/verify/inspect."""

from __future__ import annotations

import argparse
import json
import sys

from shards.codecs import CODECS
from shards.process import RESAMPLE


def _print(text: str) -> None:
    """Print, tolerating a reader that stops early (`dinotrain shards inspect OUT | head`)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _storage_options(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        val = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"dinotrain shards: --storage-options is not JSON ({e}): write e.g. "
                         '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'') from None
    if not isinstance(val, dict):
        raise SystemExit("dinotrain shards: --storage-options must be a JSON object")
    return val


def _ct_window(text: str | None):
    if not text:
        return None
    try:
        c, w = (float(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"dinotrain shards: --ct-window {text!r}: write CENTER,WIDTH such as 40,400") from None
    return (c, w)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="shards_command", metavar="ACTION", title="actions")
    sub.required = True

    b = sub.add_parser("build", help="turn a corpus into WebDataset shards + manifest.json + rejects.jsonl",
                       description="Turn files, folders, globs or a CSV listing (path column) into verified "
                       "WebDataset shards, locally or on s3://.")
    b.add_argument("sources", nargs="+", metavar="SOURCE", help="files, folders (recursive), globs, CSV listing, s3:// URLs")
    b.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    b.add_argument("--name", required=True, help="dataset name: shards are NAME-SPLIT-000000.tar")
    b.add_argument("--metadata", help="CSV joined by `path` (relative to the CSV) or --id-column")
    b.add_argument("--id-column", help="metadata column matched against file names without extension")
    b.add_argument("--patient-column", default="patient_id", help="metadata column with patient ids (default: patient_id)")
    b.add_argument("--modality", help="modality of every sample (default: metadata, DICOM tag, or 'unknown')")
    b.add_argument("--size", type=int, default=518, help="shorter side after resize (default 518; 0 = keep)")
    b.add_argument("--resample", default="bicubic", choices=RESAMPLE)
    b.add_argument("--upscale", action="store_true", help="also enlarge images smaller than --size")
    b.add_argument("--bits", type=int, choices=(8, 16), help="PNG depth (default: 16 for sources deeper than 8 bits)")
    b.add_argument("--channels", type=int, default=1, choices=(1, 3), help="3 keeps RGB sources in colour")
    b.add_argument("--dicom-window", default="auto", choices=("auto", "none", "minmax"),
                   help="auto: VOI LUT / window from the file, else min-max")
    b.add_argument("--frames", default="all", choices=("all", "middle"), help="frames of multi-frame files")
    b.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="NIfTI slicing axis")
    b.add_argument("--slice-stride", type=int, default=1, help="keep every Nth NIfTI slice")
    b.add_argument("--ct-window", help="CENTER,WIDTH intensity window for NIfTI volumes (default: min-max per volume)")
    b.add_argument("--val-fraction", type=float, default=0.0)
    b.add_argument("--test-fraction", type=float, default=0.0)
    b.add_argument("--split-salt", default="dinotrain", help="salt of the patient hash (splits, stored ids)")
    b.add_argument("--dedup", action="store_true", help="drop exact pixel duplicates (counted)")
    b.add_argument("--samples-per-shard", type=int, default=1000)
    b.add_argument("--codec", default="png", choices=CODECS,
                   help="image codec: png, or j2k (lossless JPEG 2000: DALI decodes it on the GPU; see README)")
    b.add_argument("--compress-level", type=int, default=6, choices=range(10), metavar="0-9", help="PNG zlib level")
    b.add_argument("--workers", type=int, help="processes (default: all cores); output is the same for any N")
    b.add_argument("--storage-options", help="fsspec options as JSON (e.g. an S3 endpoint)")
    b.add_argument("--overwrite", action="store_true", help="remove this build's files in OUT and rebuild")
    b.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("verify", help="decode every sample and check it against manifest.json",
                       description="Decode every sample, check counts, checksums, .idx files and member names.")
    v.add_argument("out", metavar="OUT", help="shard folder or s3:// prefix")
    v.add_argument("--storage-options", help="fsspec options as JSON")
    v.add_argument("--no-progress", action="store_true")

    i = sub.add_parser("inspect", help="tables of counts, labels, demographics and image sizes",
                       description="Counts per split/dataset/modality/label, age and sex coverage, image sizes.")
    i.add_argument("out", metavar="OUT", help="shard folder or s3:// prefix")
    i.add_argument("--storage-options", help="fsspec options as JSON")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")


def main(args: argparse.Namespace) -> int:
    cmd = args.shards_command
    so = _storage_options(getattr(args, "storage_options", None))
    if cmd == "build":
        from shards.build import BuildError, build_shards

        try:
            man = build_shards(
                args.sources, args.out, name=args.name, size=args.size, workers=args.workers,
                metadata=args.metadata, id_column=args.id_column, modality=args.modality,
                val_fraction=args.val_fraction, test_fraction=args.test_fraction, split_salt=args.split_salt,
                patient_column=args.patient_column, bits=args.bits, channels=args.channels,
                resample=args.resample, upscale=args.upscale, dicom_window=args.dicom_window,
                frames=args.frames, axis=args.axis, slice_stride=args.slice_stride,
                ct_window=_ct_window(args.ct_window), dedup=args.dedup,
                samples_per_shard=args.samples_per_shard, compress_level=args.compress_level, codec=args.codec,
                storage_options=so, overwrite=args.overwrite, progress=not args.no_progress,
            )
        except (BuildError, OSError) as e:
            print(f"dinotrain shards build: error: {e}", file=sys.stderr)
            return 1
        if args.no_progress:  # with the bar, build_shards prints the final line itself
            from shards.manifest import final_line

            print(final_line(man))
        return 0
    if cmd == "verify":
        from shards.verify import verify_shards

        report = verify_shards(args.out, storage_options=so, progress=not args.no_progress)
        _print(report.text())
        return 0 if report.ok else 1
    if cmd == "inspect":
        from shards.inspect import format_stats, inspect_shards

        try:
            stats = inspect_shards(args.out, storage_options=so)
        except (OSError, ValueError) as e:
            print(f"dinotrain shards inspect: error: {e}", file=sys.stderr)
            return 1
        _print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
        return 0
    return 2
