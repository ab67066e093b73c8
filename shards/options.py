"""The options of `shards build`, spelled once: `build_shards`, its checks and the CLI read this class.

Each field's metadata carries its command-line help (the flag is `--` + the name with dashes), and
whether it changes the output (`identity`): those go into the manifest and the build fingerprint,
the others (--workers, --progress, credentials) do not. A new option is one field here, plus its
use where it acts.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields

from shards.codecs import CODECS
from shards.process import RESAMPLE
from shards.readers import DEFAULT_MAX_PIXELS
from shards.samples import MIN_SIZE
from shards.storage import is_remote, strip_file

DEFAULT_SAMPLES_PER_SHARD = 1000
SEX_CODES = ("M", "F", "O", "U")  # targets of --sex-map (U: unknown, stored as null)
DUPLICATE_ROWS = ("error", "first", "last")


class BuildError(RuntimeError):
    """A fatal problem (bad option, no inputs, OUT not writable, OUT holding another build)."""


def _opt(help: str, *, identity: bool = True, **cli) -> dict:
    """Field metadata: `help` and argparse keywords (choices, type, action, metavar, flag, required)."""
    return {"help": help, "identity": identity, "cli": cli}


def parse_storage_options(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        val = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): write e.g. "
                                         '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'') from None
    if not isinstance(val, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return val


def parse_ct_window(text: str) -> tuple[float, float]:
    try:
        c, w = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write CENTER,WIDTH such as 40,400") from None
    return (c, w)


def parse_sex_map(text: str) -> dict[str, str]:
    """'1=M,2=F,9=U' -> {"1": "M", "2": "F", "9": "U"} (codes compared upper-cased, stripped)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        code, sep, target = part.partition("=")
        target = target.strip().upper()
        if not sep or not code.strip() or target not in SEX_CODES:
            raise argparse.ArgumentTypeError(f"{part!r}: write CODE=SEX pairs such as 1=M,2=F with SEX one of "
                                             f"{', '.join(SEX_CODES)} (U = unknown)")
        out[code.strip().upper()] = target
    return out


@dataclass(frozen=True)
class BuildOptions:
    name: str = field(default="", metadata=_opt("dataset name: shards are NAME-SPLIT-000000.tar", required=True))
    metadata: str | None = field(default=None, metadata=_opt(
        "CSV joined by `path` (relative to the CSV) or --id-column; its content is part of the build's identity"))
    root: str | None = field(default=None, metadata=_opt(
        "folder the paths of a CSV listing must stay inside (default: the CSV's folder; rows still resolve "
        "relative to the CSV); rows outside it, also through a symlink, are rejected unread (outside_root)",
        metavar="FOLDER"))
    allow_outside_root: bool = field(default=False, metadata=_opt(
        "read every path a CSV listing names, also absolute ones, ../ and symlinks leading out of its root"))
    id_column: str | None = field(default=None, metadata=_opt(
        "metadata column matched against file names without extension"))
    patient_column: str = field(default="patient_id", metadata=_opt(
        "metadata column with patient ids (default: patient_id)"))
    duplicate_rows: str = field(default="error", metadata=_opt(
        "several metadata rows for one file with different values: error (default, names the rows), "
        "or keep the first / last", choices=DUPLICATE_ROWS))
    sex_map: dict | None = field(default=None, metadata=_opt(
        "map non-standard sex codes, e.g. 1=M,2=F,9=U (M, F, O accepted as is; others are stored as null "
        "and counted)", type=parse_sex_map, metavar="CODE=SEX,..."))
    modality: str | None = field(default=None, metadata=_opt(
        "modality of every sample (default: metadata, DICOM tag, or 'unknown')"))
    size: int = field(default=518, metadata=_opt("shorter side after resize (default 518; 0 = keep)", type=int))
    min_size: int = field(default=MIN_SIZE, metadata=_opt(
        f"reject images whose shorter side is below this many pixels (default {MIN_SIZE}; 0 = keep all)", type=int,
        metavar="PIXELS"))
    max_file_mb: float | None = field(default=None, metadata=_opt(
        "reject files larger than this many MB before reading them (default: no cap)", type=float, metavar="MB"))
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=_opt(
        f"reject inputs with more pixels than this (width x height x frames or slices), read from the header "
        f"before decoding (too_many_pixels; default {DEFAULT_MAX_PIXELS:,}; 0 = no cap)", type=int,
        metavar="PIXELS"))
    resample: str = field(default="bicubic", metadata=_opt("resampling filter", choices=RESAMPLE))
    upscale: bool = field(default=False, metadata=_opt("also enlarge images smaller than --size"))
    bits: int | None = field(default=None, metadata=_opt(
        "sample depth (default: 16 for sources deeper than 8 bits)", type=int, choices=(8, 16)))
    channels: int = field(default=1, metadata=_opt("3 keeps RGB sources in colour", type=int, choices=(1, 3)))
    dicom_window: str = field(default="auto", metadata=_opt(
        "auto: VOI LUT / window from the file, else min-max", choices=("auto", "none", "minmax")))
    frames: str = field(default="all", metadata=_opt("frames of multi-frame files", choices=("all", "middle")))
    axis: int = field(default=2, metadata=_opt("NIfTI slicing axis", type=int, choices=(0, 1, 2)))
    slice_stride: int = field(default=1, metadata=_opt("keep every Nth NIfTI slice", type=int))
    ct_window: tuple[float, float] | None = field(default=None, metadata=_opt(
        "CENTER,WIDTH intensity window for NIfTI volumes (default: min-max per volume)", type=parse_ct_window,
        metavar="CENTER,WIDTH"))
    val_fraction: float = field(default=0.0, metadata=_opt("fraction of patients in split val", type=float))
    test_fraction: float = field(default=0.0, metadata=_opt("fraction of patients in split test", type=float))
    split_salt: str = field(default="dinotrain", metadata=_opt("salt of the patient hash (splits, stored ids)"))
    dedup: bool = field(default=False, metadata=_opt(
        "drop exact pixel duplicates (each listed in duplicates.jsonl with what it duplicates)"))
    samples_per_shard: int = field(default=DEFAULT_SAMPLES_PER_SHARD, metadata=_opt("samples per tar", type=int))
    codec: str = field(default="png", metadata=_opt(
        "image codec: png, or j2k (lossless JPEG 2000: DALI decodes it on the GPU; see README)", choices=CODECS))
    compress_level: int = field(default=6, metadata=_opt("PNG zlib level (no effect on j2k)", type=int,
                                                          choices=range(10), metavar="0-9"))
    workers: int | None = field(default=None, metadata=_opt(
        "processes (default: all cores); output is the same for any N", identity=False, type=int))
    storage_options: dict | None = field(default=None, metadata=_opt(
        "fsspec options as JSON (e.g. an S3 endpoint)", identity=False, type=parse_storage_options,
        metavar="JSON"))
    overwrite: bool = field(default=False, metadata=_opt(
        "remove this build's files in OUT and rebuild", identity=False))
    progress: bool = field(default=True, metadata=_opt(
        "no progress bar", identity=False, flag="--no-progress", action="store_false"))

    def check(self) -> None:
        """Raise BuildError naming the first invalid option and what is allowed."""
        n = self.name
        if not n or any(c in n for c in "/\\. \t") or n.startswith("-"):
            raise BuildError(f"--name {n!r}: use letters, digits, '-' or '_' (no dots, slashes or spaces)")
        for f in fields(self):
            choices = f.metadata["cli"].get("choices")
            v = getattr(self, f.name)
            if choices is not None and v is not None and v not in choices:
                allowed = ", ".join(str(c) for c in choices)
                raise BuildError(f"--{f.name.replace('_', '-')} {v!r}: allowed values are {allowed}")
        for key in ("size", "min_size", "max_pixels"):
            if getattr(self, key) < 0:
                raise BuildError(f"--{key.replace('_', '-')} {getattr(self, key)}: must be >= 0 (0 turns it off)")
        if self.max_file_mb is not None and self.max_file_mb <= 0:
            raise BuildError(f"--max-file-mb {self.max_file_mb}: must be > 0 (leave it out for no cap)")
        vf, tf = self.val_fraction, self.test_fraction
        if not (0 <= vf < 1 and 0 <= tf < 1 and vf + tf < 1):
            raise BuildError(f"--val-fraction {vf} + --test-fraction {tf}: each in [0, 1), sum < 1")
        for key in ("samples_per_shard", "slice_stride"):
            if getattr(self, key) < 1:
                raise BuildError(f"--{key.replace('_', '-')} {getattr(self, key)}: must be >= 1")
        if self.codec == "j2k" and self.channels == 3 and self.bits == 16:
            raise BuildError("--codec j2k --channels 3 --bits 16: 16-bit colour cannot be written as J2K; "
                             "use --codec png, or --bits 8")
        if self.root is not None and not is_remote(self.root) and not os.path.isdir(strip_file(self.root)):
            raise BuildError(f"--root {self.root}: not a folder; name the folder the CSV listing's paths lie in")
        if self.sex_map:
            bad = [v for v in self.sex_map.values() if v not in SEX_CODES]
            if bad:
                raise BuildError(f"sex_map target {bad[0]!r}: allowed values are {', '.join(SEX_CODES)}")

    def identity(self) -> dict:
        """The options that change the output (manifest `options`, build fingerprint)."""
        d = asdict(self)
        return {f.name: d[f.name] for f in fields(self) if f.metadata["identity"]}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BuildOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @classmethod
    def from_kwargs(cls, kw: dict) -> BuildOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise TypeError(f"build_shards: unknown option(s) {', '.join(unknown)}")
        return cls(**kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One argparse option per BuildOptions field (defaults from the dataclass)."""
    for f in fields(BuildOptions):
        cli = dict(f.metadata["cli"])
        flag = cli.pop("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not MISSING else None
        if f.type in ("bool", bool) and "action" not in cli:
            cli["action"] = "store_true"
        parser.add_argument(flag, dest=f.name, default=default, help=f.metadata["help"], **cli)
