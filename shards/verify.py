"""`shards verify OUT`: decode every sample and check it against manifest.json and the .idx files.

Reports every problem (not just the first) with the shard and the key, so one run tells the
whole story; `VerifyReport.ok` is False on any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field

from shards import codecs
from shards.process import pixel_sha256
from shards.storage import Output
from shards.writer import INDEX_VERSION, MEMBER_RE, index_text

MAX_LISTED = 50


@dataclass
class VerifyReport:
    out: str
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, msg: str) -> None:
        self.problems.append(msg)

    def text(self) -> str:
        if self.ok:
            return f"{self.out}: OK, {self.shards} shards, {self.samples} samples decoded and match manifest.json"
        head = f"{self.out}: FAILED, {len(self.problems)} problem(s) in {self.shards} shards / {self.samples} samples:"
        lines = [f"  - {p}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        return "\n".join([head, *lines])


def _check_member(shard: str, m: tarfile.TarInfo, rep: VerifyReport) -> bool:
    if not m.isreg():
        rep.add(f"shard {shard}: member {m.name!r} is not a regular file (type {m.type!r})")
        return False
    if "/" in m.name or "\\" in m.name or m.name.startswith(".") or ".." in m.name or not MEMBER_RE.match(m.name):
        rep.add(f"shard {shard}: odd member name {m.name!r} (expected KEY.png|jp2 / KEY.json, no folders or '..')")
        return False
    return True


@dataclass
class _Seen:
    """What the shards hold, to check the manifest's counts against."""

    splits: Counter = field(default_factory=Counter)
    modalities: Counter = field(default_factory=Counter)
    datasets: Counter = field(default_factory=Counter)
    sources: set = field(default_factory=set)


def _check_bytes(rec: dict, f, rep: VerifyReport) -> None:
    """The shard file's size and sha256 against its manifest record (streamed), `f` rewound after."""
    shard = rec["path"]
    sha, size = hashlib.sha256(), 0
    for block in iter(lambda: f.read(1 << 20), b""):
        sha.update(block)
        size += len(block)
    f.seek(0)
    if size != rec["bytes"]:
        rep.add(f"shard {shard}: {size} bytes, manifest says {rec['bytes']}")
    if sha.hexdigest() != rec["sha256"]:
        rep.add(f"shard {shard}: sha256 differs from manifest.json (file changed or corrupt)")


def _check_sample(rec: dict, tf, key: str, g: dict, codec: str, rep: VerifyReport) -> dict | None:
    """One sample's json and image against each other and the shard; its json, or None when it
    cannot be read (the finding is in `rep`)."""
    shard, image_ext = rec["path"], codecs.extension(codec)
    try:
        meta = json.loads(tf.extractfile(g["json"]).read())
    except ValueError as e:
        rep.add(f"shard {shard}: sample '{key}' json does not parse ({e})")
        return None
    try:
        data = tf.extractfile(g[image_ext]).read()
        img = codecs.decode(data)
    except Exception as e:  # noqa: BLE001 - any decode failure is a finding, not a crash
        rep.add(f"shard {shard}: sample '{key}' {image_ext} does not decode ({type(e).__name__}: {e})")
        return None
    if codecs.codec_of(data) != codec or meta.get("codec", "png") != codec:
        rep.add(f"shard {shard}: sample '{key}' is {codecs.codec_of(data)} (json says {meta.get('codec', 'png')}), "
                f"manifest.json says codec {codec}")
    if pixel_sha256(img) != meta.get("sha256"):
        rep.add(f"shard {shard}: sample '{key}' pixels do not match the sha256 in its json")
    if list(img.shape[:2]) != meta.get("shape"):
        rep.add(f"shard {shard}: sample '{key}' is {list(img.shape[:2])}, json says {meta.get('shape')}")
    if meta.get("split") != rec["split"]:
        rep.add(f"shard {shard}: sample '{key}' has split {meta.get('split')!r} in a {rec['split']} shard")
    return meta


def _verify_shard(rec: dict, f, idx: str | None, rep: VerifyReport, keys: set[str], seen: _Seen, codec: str) -> None:
    """Check one shard of `codec` samples read from the seekable binary file `f` (streamed: shards may be GBs)."""
    shard = rec["path"]
    image_ext = codecs.extension(codec)
    _check_bytes(rec, f, rep)
    try:
        tf = tarfile.open(fileobj=f, mode="r:")
        members = tf.getmembers()
    except (tarfile.TarError, EOFError, OSError) as e:
        rep.add(f"shard {shard}: not a readable tar ({e})")
        return
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    order: list[str] = []
    lines = []
    for m in members:
        if not _check_member(shard, m, rep):
            continue
        key, ext = m.name.split(".", 1)
        if key not in groups:
            groups[key] = {}
            order.append(key)
            lines.append([])
        groups[key][ext] = m
        lines[-1].append(f"{ext} {m.offset_data} {m.size} {m.name}")
    n = 0
    for key in order:
        g = groups[key]
        if set(g) != {image_ext, "json"}:
            rep.add(f"shard {shard}: sample '{key}' has {', '.join(sorted(g))}, expected {image_ext} + json "
                    f"(manifest.json says codec {codec})")
            continue
        if key in keys:
            rep.add(f"shard {shard}: sample '{key}' appears twice in the shard set")
        keys.add(key)
        n += 1
        meta = _check_sample(rec, tf, key, g, codec, rep)
        if meta is None:
            continue
        seen.splits[rec["split"]] += 1
        seen.modalities[meta.get("modality")] += 1
        seen.datasets[meta.get("dataset")] += 1
        seen.sources.add(meta.get("source"))
    if n != rec["samples"]:
        rep.add(f"shard {shard}: {n} complete samples, manifest says {rec['samples']}")
    rep.samples += n
    if idx is None:
        rep.add(f"shard {shard}: index {rec.get('index')} missing (DALI needs it)")
    elif idx != index_text([" ".join(x) for x in lines]):
        first = idx.split("\n", 1)[0]
        hint = "" if first.startswith(INDEX_VERSION) else f" (header {first!r}, expected '{INDEX_VERSION} N')"
        rep.add(f"shard {shard}: index {rec.get('index')} does not match the tar's members{hint}")


def verify_shards(out: str, storage_options: dict | None = None, progress: bool = False) -> VerifyReport:
    outp = Output(out, storage_options)
    rep = VerifyReport(out)
    if not outp.exists("manifest.json"):
        rep.add("manifest.json missing: the build did not finish (rerun `dinotrain shards build` to resume)")
        return rep
    try:
        man = json.loads(outp.read_bytes("manifest.json"))
    except ValueError as e:
        rep.add(f"manifest.json does not parse: {e}")
        return rep
    codec = man.get("codec", "png")  # shard sets built before codecs were recorded are PNG
    if codec not in codecs.CODECS:
        rep.add(f"manifest.json: codec {codec!r} is not one of {', '.join(codecs.CODECS)} (built by a newer dinotrain?)")
        return rep
    listed = {s["path"] for s in man.get("shards", [])}
    present = {n for n in outp.listdir() if n.endswith(".tar")}
    for extra in sorted(present - listed):
        rep.add(f"shard {extra}: in OUT but not in manifest.json (left over from another build?)")
    from tqdm.auto import tqdm

    keys: set[str] = set()
    seen = _Seen()
    for rec in tqdm(man.get("shards", []), desc="verify", unit="shard", disable=not progress):
        rep.shards += 1
        if rec["path"] not in present:
            rep.add(f"shard {rec['path']}: listed in manifest.json but missing")
            continue
        idx = outp.read_bytes(rec["index"]).decode() if outp.exists(rec.get("index", "")) else None
        with outp.open(rec["path"]) as f:
            _verify_shard(rec, f, idx, rep, keys, seen, codec)
    _check_totals(man, rep, seen)
    _check_lists(outp, man.get("totals", {}), rep)
    return rep


def _counts(c: Counter) -> dict:
    return {k: v for k, v in c.items() if v}


def _check_totals(man: dict, rep: VerifyReport, seen: _Seen) -> None:
    """Every count of the manifest against what the shards hold (and the accounting identities)."""
    t = man.get("totals", {})
    for key, held in (("samples", rep.samples), ("written", len(seen.sources))):
        if t.get(key) != held:
            rep.add(f"totals.{key}: the shards hold {held}, manifest says {t.get(key)}")
    fr = t.get("frames", {})
    if fr and fr.get("written") != rep.samples:
        rep.add(f"totals.frames.written: the shards hold {rep.samples} samples, manifest says {fr.get('written')}")
    for key, held in (("splits", seen.splits), ("modalities", seen.modalities), ("datasets", seen.datasets)):
        if _counts(held) != _counts(Counter(man.get(key, {}))):
            rep.add(f"{key}: shards hold {dict(held)}, manifest says {man.get(key)}")
    if sum(s.get("samples", 0) for s in man.get("shards", [])) != t.get("samples"):
        rep.add(f"totals.samples {t.get('samples')} != the sum of the shards' sample counts")
    if t.get("inputs") != t.get("written", 0) + t.get("rejected", 0) + t.get("duplicates", 0):
        rep.add(f"totals: inputs {t.get('inputs')} != written + rejected + duplicates ({t})")
    if fr and fr.get("inputs") != fr.get("written", 0) + fr.get("rejected", 0) + fr.get("duplicates", 0):
        rep.add(f"totals.frames: inputs {fr.get('inputs')} != written + rejected + duplicates ({fr})")
    reasons = sum(man.get("reject_reasons", {}).values())
    if "reject_reasons" in man and reasons != t.get("rejected"):
        rep.add(f"reject_reasons add up to {reasons}, totals.rejected says {t.get('rejected')}")


def _check_lists(outp: Output, t: dict, rep: VerifyReport) -> None:
    """rejects.jsonl (and duplicates.jsonl when --dedup wrote one) against the totals."""
    if outp.exists("rejects.jsonl"):
        lines = [json.loads(x) for x in outp.read_bytes("rejects.jsonl").decode().splitlines() if x.strip()]
        whole = sum(1 for x in lines if "frame" not in x)
        if whole != t.get("rejected"):
            rep.add(f"rejects.jsonl: {whole} rejected inputs, manifest says {t.get('rejected')}")
    else:
        rep.add("rejects.jsonl missing")
    if outp.exists("duplicates.jsonl"):
        lines = [json.loads(x) for x in outp.read_bytes("duplicates.jsonl").decode().splitlines() if x.strip()]
        frames = t.get("frames", {}).get("duplicates")
        if frames is not None and len(lines) != frames:
            rep.add(f"duplicates.jsonl: {len(lines)} duplicate frames, manifest says {frames}")
