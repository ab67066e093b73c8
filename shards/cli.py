"""`dinotrain shards build|verify|inspect`: argument parsing only; the work is in build/verify/inspect."""

from __future__ import annotations

import argparse
import json
import sys

from shards import options as build_options


def _print(text: str) -> None:
    """Print, tolerating a reader that stops early (`dinotrain shards inspect OUT | head`)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


BUILD_EXAMPLES = """examples:
  # a folder (recursive) of DICOM/PNG/JPEG/NIfTI files; 5% of the patients in split val
  dinotrain shards build /archive/cxr --name cxr --val-fraction 0.05 --out /data/shards/cxr

  # a CSV listing: a `path` column (relative to the CSV; rows may not leave its folder unless
  # --root/--allow-outside-root) and per-image metadata columns (age, sex, labels, patient_id ...),
  # written to S3 (credentials and endpoint as for any fsspec/s3fs client)
  dinotrain shards build /archive/cxr/listing.csv --name cxr --out s3://bucket/shards/cxr \\
      --storage-options '{"client_kwargs": {"endpoint_url": "https://s3.example.org"}}'

A summary ends the build: where rejects.jsonl is (and how many rejects), then the totals."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="shards_command", metavar="ACTION", title="actions")
    sub.required = True

    b = sub.add_parser("build", help="turn a corpus into WebDataset shards + manifest.json + rejects.jsonl",
                       description="Turn files, folders, globs or a CSV listing (path column) into verified "
                       "WebDataset shards, locally or on s3://.", epilog=BUILD_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("sources", nargs="+", metavar="SOURCE", help="files, folders (recursive), globs, CSV listing, s3:// URLs")
    b.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    build_options.add_arguments(b)

    v = sub.add_parser("verify", help="decode every sample and check it against manifest.json",
                       description="Decode every sample, check counts, checksums, .idx files and member names.")
    v.add_argument("out", metavar="OUT", help="shard folder or s3:// prefix")
    v.add_argument("--storage-options", type=build_options.parse_storage_options, help="fsspec options as JSON")
    v.add_argument("--no-progress", action="store_true")

    i = sub.add_parser("inspect", help="tables of counts, labels, demographics and image sizes",
                       description="Counts per split/dataset/modality/label, age and sex coverage, image sizes.")
    i.add_argument("out", metavar="OUT", help="shard folder or s3:// prefix")
    i.add_argument("--storage-options", type=build_options.parse_storage_options, help="fsspec options as JSON")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")


def main(args: argparse.Namespace) -> int:
    cmd = args.shards_command
    so = args.storage_options
    if cmd == "build":
        return _build(args)
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


def _build(args: argparse.Namespace) -> int:
    from shards.build import BuildError, build_shards, rejects_location
    from shards.manifest import summary_lines, warnings
    from shards.storage import Output

    opts = build_options.BuildOptions.from_args(args)
    try:
        man = build_shards(args.sources, args.out, opts)
    except (BuildError, OSError) as e:
        print(f"dinotrain shards build: error: {e}", file=sys.stderr)
        return 1
    if not opts.progress:  # with the bar, build_shards prints the warnings and the final line itself
        for line in warnings(man):
            print(f"warning: {line}", file=sys.stderr)
        print("\n".join(summary_lines(man, rejects_location(Output(args.out, opts.storage_options)))))
    if man["totals"]["written"] == 0:
        print(f"dinotrain shards build: error: nothing was written to {args.out}: every input was rejected "
              "(reasons in rejects.jsonl); fix the inputs or the options", file=sys.stderr)
        return 1
    return 0
