"""What a build refuses to read (issue 23) and what it tells the user at its end (issue 22).

- a CSV listing's rows are confined to its root: `../outside/x.png`, `/etc/passwd` and symlinks out
  are rejected as `outside_root` before anything opens them, unless --root / --allow-outside-root;
- --max-pixels: inputs over the cap are rejected as `too_many_pixels` from their header, before
  decoding (PNG/JPEG/TIFF, DICOM rows x columns x frames, NIfTI and NPY/NPZ shapes), with Pillow's
  own bomb check following the same number;
- the summary names rejects.jsonl and how many rejects it holds; `shards build --help` has examples.

Every file is made in the test from real radiographs (JSRT) or pydicom's real DICOM files.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import shards.samples as samples_mod
from shards.build import BuildError, build_shards
from shards.readers import DEFAULT_MAX_PIXELS, ReadOptions, Reject, read
from shards.verify import verify_shards

REPO = Path(__file__).resolve().parents[1]
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
KW = dict(size=32, workers=1, progress=False)


def rejects(out: Path) -> dict[str, dict]:
    return {json.loads(x)["source"]: json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()}


def sources_in_shards(out: Path) -> set[str]:
    got = set()
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as tf:
            got |= {json.loads(tf.extractfile(m).read())["source"] for m in tf.getmembers() if m.name.endswith(".json")}
    return got


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dinotrain", "shards", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


@pytest.fixture
def listing(tmp_path, test_data) -> dict[str, Path]:
    """ds/list.csv naming: an image inside ds/, a real JSRT image in ../outside/, /etc/passwd, and a
    symlink inside ds/ to the outside image."""
    jsrt = test_data / "jsrt" / "images"
    ds, outside = tmp_path / "ds", tmp_path / "outside"
    (ds / "images").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(jsrt / "JPCLN001.png", ds / "images" / "JPCLN001.png")
    shutil.copy(jsrt / "JPCLN004.png", outside / "JPCLN004.png")
    os.symlink(outside / "JPCLN004.png", ds / "images" / "link.png")
    (ds / "list.csv").write_text("path,age\nimages/JPCLN001.png,50\n../outside/JPCLN004.png,60\n/etc/passwd,70\n"
                                 "images/link.png,80\n")
    return {"csv": ds / "list.csv", "inside": ds / "images" / "JPCLN001.png", "outside": outside / "JPCLN004.png",
            "link": ds / "images" / "link.png", "passwd": Path("/etc/passwd")}


def test_listing_rows_outside_its_root_are_rejected_without_being_opened(tmp_path, listing, monkeypatch):
    opened = []
    real = samples_mod.read_source

    def spy(source, max_bytes=None):  # one worker: decoding runs in this process
        opened.append(source)
        return real(source, max_bytes)

    monkeypatch.setattr(samples_mod, "read_source", spy)
    out = tmp_path / "out"
    man = build_shards([str(listing["csv"])], str(out), name="c", **KW)
    assert opened == [str(listing["inside"])]
    assert man["totals"]["written"] == 1 and man["reject_reasons"] == {"outside_root": 3}
    rej = rejects(out)
    assert {r["reason"] for r in rej.values()} == {"outside_root"}
    assert set(rej) == {str(listing["outside"]), "/etc/passwd", str(listing["link"])}
    root = str(listing["csv"].parent)
    assert all(f"outside the listing's root {root}" in r["error"] for r in rej.values())
    assert f"through a symlink: {listing['link']} -> {listing['outside']}" in rej[str(listing["link"])]["error"]
    assert sources_in_shards(out) == {str(listing["inside"])}
    assert verify_shards(str(out)).ok

    # a wider --root admits the ../outside file and the symlink to it; /etc/passwd stays out, unread
    opened.clear()
    man = build_shards([str(listing["csv"])], str(tmp_path / "wide"), name="c", root=str(tmp_path), **KW)
    assert man["totals"]["written"] == 3 and man["reject_reasons"] == {"outside_root": 1}
    assert "/etc/passwd" not in opened and len(opened) == 3
    # naming the outside file on the command line is the user's choice: never refused
    man = build_shards([str(listing["csv"]), str(listing["outside"])], str(tmp_path / "named"), name="c", **KW)
    assert man["reject_reasons"] == {"outside_root": 2} and man["totals"]["written"] == 2
    with pytest.raises(BuildError, match="--root .*not a folder"):
        build_shards([str(listing["csv"])], str(tmp_path / "o"), name="c", root=str(tmp_path / "nope"), **KW)


def test_outside_root_compares_resolved_paths_not_prefixes(tmp_path):
    from shards.sources import outside_root

    (tmp_path / "ds").mkdir()
    assert outside_root(str(tmp_path / "ds" / "a" / "x.png"), str(tmp_path / "ds")) is None
    assert outside_root(str(tmp_path / "ds2" / "x.png"), str(tmp_path / "ds")) is not None  # a prefix, not inside
    os.symlink(tmp_path / "ds", tmp_path / "alias")  # a root reached through a symlink is still the root
    assert outside_root(str(tmp_path / "ds" / "x.png"), str(tmp_path / "alias")) is None
    assert outside_root("s3://b/ds/sub/x.png", "s3://b/ds") is None
    for url in ("s3://b/dsx/x.png", "s3://b/ds/../other/x.png", "gs://b/ds/x.png", str(tmp_path / "ds" / "x.png")):
        assert "outside the listing's root s3://b/ds" in outside_root(url, "s3://b/ds"), url
    assert outside_root("s3://b/ds/x.png", str(tmp_path / "ds")) is not None


def test_allow_outside_root_reads_every_row_and_the_summary_names_the_rejects(tmp_path, listing):
    out = tmp_path / "out"
    res = cli("build", str(listing["csv"]), "--out", str(out), "--name", "c", "--size", "32", "--workers", "1",
              "--no-progress")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-2] == f"3 rejected inputs, each with its reason, are listed in {out / 'rejects.jsonl'}"
    assert lines[-1] == "written 1 (1 samples in 1 shards), rejected 3 (outside_root 3), duplicates 0"
    assert "warning: 3 listing rows name files outside the listing's root and were not read (outside_root): " \
           "pass --root FOLDER (or --allow-outside-root)" in res.stderr

    allowed = tmp_path / "allowed"
    res = cli("build", str(listing["csv"]), "--out", str(allowed), "--name", "c", "--size", "32", "--workers", "1",
              "--no-progress", "--allow-outside-root")
    assert res.returncode == 0, res.stderr
    rej = rejects(allowed)
    assert list(rej) == ["/etc/passwd"] and rej["/etc/passwd"]["reason"] != "outside_root"  # read, not an image
    assert sources_in_shards(allowed) == {str(listing["inside"]), str(listing["outside"]), str(listing["link"])}
    assert res.stdout.strip().splitlines()[-2].startswith("1 rejected inputs, each with its reason, are listed in ")

    # nothing rejected: the totals line alone
    clean = tmp_path / "clean"
    res = cli("build", str(listing["inside"]), "--out", str(clean), "--name", "c", "--size", "32", "--workers", "1",
              "--no-progress")
    assert res.stdout.strip().splitlines() == ["written 1 (1 samples in 1 shards), rejected 0, duplicates 0"]


@pytest.mark.s3
def test_an_s3_listing_is_confined_to_its_prefix_and_the_summary_names_the_s3_rejects(s3_env, test_data, tmp_path):
    fs, bucket = s3_env.filesystem(), s3_env.bucket
    for name, key in (("JPCLN001.png", "ds/img/a.png"), ("JPCLN004.png", "other/b.png")):
        fs.put_file(str(test_data / "jsrt" / "images" / name), f"{bucket}/{key}")
    fs.pipe_file(f"{bucket}/ds/list.csv", b"path\nimg/a.png\n../other/b.png\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = f"s3://{bucket}/shards/confined"
    res = subprocess.run([sys.executable, "-m", "dinotrain", "shards", "build", f"s3://{bucket}/ds/list.csv", "--out",
                          out, "--name", "s", "--size", "32", "--workers", "1", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-2:] == [
        f"1 rejected inputs, each with its reason, are listed in {out}/rejects.jsonl",
        "written 1 (1 samples in 1 shards), rejected 1 (outside_root 1), duplicates 0"]
    rej = [json.loads(x) for x in fs.cat_file(f"{bucket}/shards/confined/rejects.jsonl").decode().splitlines()]
    assert rej == [{"source": f"s3://{bucket}/other/b.png", "reason": "outside_root",
                    "error": rej[0]["error"]}] and f"root s3://{bucket}/ds" in rej[0]["error"]
    man = build_shards([f"s3://{bucket}/ds/list.csv"], str(tmp_path / "wide"), name="s", root=f"s3://{bucket}", **KW)
    assert man["totals"]["written"] == 2 and man["totals"]["rejected"] == 0


def test_build_help_examples_parse_with_the_real_parser():
    from dinotrain.cli import build_parser

    text = cli("build", "--help").stdout
    assert "examples:" in text
    commands = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip().startswith("dinotrain ")]
    assert len(commands) == 2
    parser = build_parser("shards")
    parsed = [parser.parse_args(shlex.split(c)[1:]) for c in commands]
    assert parsed[0].sources == ["/archive/cxr"] and parsed[0].val_fraction == 0.05
    assert parsed[1].sources[0].endswith(".csv") and parsed[1].out.startswith("s3://")
    assert parsed[1].storage_options["client_kwargs"]["endpoint_url"].startswith("https://")


def write_png16(path: Path, width: int, height: int, image: np.ndarray) -> None:
    """`image` (uint16) enlarged to width x height (nearest neighbour) as a 16-bit grayscale PNG,
    streamed row by row: a 12000x12000 file costs a second and a few MB to write (repeated rows
    compress to almost nothing), while decoding it takes gigabytes."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return len(body).to_bytes(4, "big") + tag + body + crc.to_bytes(4, "big")

    h0, w0 = image.shape
    rows = image[:, np.arange(width) * w0 // width].astype(">u2")
    comp, parts = zlib.compressobj(1), []
    for y in range(height):
        parts.append(comp.compress(b"\x00" + rows[y * h0 // height].tobytes()))
    parts.append(comp.flush())
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_a_12000px_16bit_png_is_rejected_from_its_header_under_the_default_cap(tmp_path, test_data):
    cxr = np.asarray(Image.open(test_data / "jsrt" / "images" / "JPCLN002.png").convert("L")).astype(np.uint16) * 257
    src = tmp_path / "in"
    src.mkdir()
    write_png16(src / "huge.png", 12000, 12000, cxr)
    shutil.copy(test_data / "jsrt" / "images" / "JPCLN001.png", src / "small.png")
    # a real 16-bit PNG, which Pillow on its own only warns about (it fails above 2 x 89 Mpx)
    with pytest.warns(Image.DecompressionBombWarning), Image.open(src / "huge.png") as im:
        assert (im.size, im.mode) == ((12000, 12000), "I;16")
    # in a fresh process, to measure its own peak memory (VmHWM: ru_maxrss would start from this
    # process's, inherited through fork and exec): decoding the image alone would need > 1 GB
    code = ("import json, sys; from shards.build import build_shards; "
            "m = build_shards([sys.argv[1]], sys.argv[2], name='big', size=64, workers=1, progress=False); "
            "hwm = next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')); "
            "print(json.dumps([m['totals'], m['reject_reasons'], hwm / 2**20]))")
    res = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "out")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert res.returncode == 0, res.stderr
    totals, reasons, peak_gb = json.loads(res.stdout.strip().splitlines()[-1])
    assert totals["written"] == 1 and reasons == {"too_many_pixels": 1}
    assert peak_gb < 0.5, f"peak {peak_gb:.2f} GB: the image was decoded"
    err = rejects(tmp_path / "out")[str(src / "huge.png")]["error"]
    assert err.startswith(f"12000x12000 = 144,000,000 pixels, over --max-pixels {DEFAULT_MAX_PIXELS:,}")


def test_max_pixels_counts_every_format_from_its_header(tmp_path, test_data):
    jsrt = test_data / "jsrt" / "images" / "JPCLN003.png"
    n = 518 * 518
    assert read(jsrt.read_bytes(), "x.png", ReadOptions(max_pixels=n)).frames[0].pixels.shape == (518, 518)
    with pytest.raises(Reject, match=f"518x518 = {n:,} pixels, over --max-pixels {n - 1:,}") as e:
        read(jsrt.read_bytes(), "x.png", ReadOptions(max_pixels=n - 1))
    assert e.value.reason == "too_many_pixels"
    # DICOM: rows x columns x frames (two 100x100 frames)
    dcm = (TEST_FILES / "SC_rgb_rle_2frame.dcm").read_bytes()
    assert len(read(dcm, "x.dcm", ReadOptions(max_pixels=20_000)).frames) == 2
    with pytest.raises(Reject, match="100x100x2 frames = 20,000 pixels"):
        read(dcm, "x.dcm", ReadOptions(max_pixels=19_999))
    # NIfTI: the header's shape decides before the voxels are inflated; this one declares 6.4 G voxels
    # but holds 4 KB, so only a header check can call it too_many_pixels (a decoder would say truncated)
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 4000, 400))
    hdr.set_data_dtype(np.int16)
    bomb = gzip.compress(hdr.binaryblock + b"\0" * 4 + bytes(4096))
    with pytest.raises(Reject, match="4000x4000x400 voxels = 6,400,000,000 pixels") as e:
        read(bomb, "v.nii.gz", ReadOptions())
    assert e.value.reason == "too_many_pixels"
    vol = np.stack([np.asarray(Image.open(jsrt).convert("L").resize((40, 40)))] * 10, axis=-1)
    vol_gz = gzip.compress(nib.Nifti1Image(vol, np.eye(4)).to_bytes())
    assert len(read(vol_gz, "v.nii.gz", ReadOptions(max_pixels=16_000)).frames) == 10
    with pytest.raises(Reject, match="40x40x10 voxels"):
        read(vol_gz, "v.nii.gz", ReadOptions(max_pixels=15_999))
    # NPZ: the members' headers, before they are inflated
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.stack([vol[..., 0]] * 5), labels=np.arange(5))
    assert len(read(buf.getvalue(), "a.npz", ReadOptions(max_pixels=8005)).frames) == 5
    with pytest.raises(Reject, match="too_many_pixels"):
        read(buf.getvalue(), "a.npz", ReadOptions(max_pixels=8004))
    # 0 turns the cap off (BuildOptions 0 -> ReadOptions None)
    assert read(jsrt.read_bytes(), "x.png", ReadOptions(max_pixels=None)).frames


def test_pillow_bomb_check_gives_way_to_max_pixels(test_data, monkeypatch):
    """Pillow's own check (a warning above MAX_IMAGE_PIXELS, an error above twice it, at open) does not
    decide: --max-pixels does, with one message, below or above Pillow's limit; Pillow's setting is
    left as it was."""
    data = (test_data / "jsrt" / "images" / "JPCLN005.png").read_bytes()  # 518x518 = 268,324 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # Pillow alone would refuse this image at open
    assert read(data, "x.png", ReadOptions(max_pixels=300_000)).frames[0].pixels.shape == (518, 518)
    for cap in (100_000, 200_000):  # under Pillow's error and under its warning: the same reject
        with pytest.raises(Reject, match=f"^too_many_pixels: 518x518 = 268,324 pixels, over --max-pixels {cap:,}"):
            read(data, "x.png", ReadOptions(max_pixels=cap))
    assert Image.MAX_IMAGE_PIXELS == 100_000


def test_max_pixels_in_a_build_and_its_option(tmp_path, test_data):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("JPCLN001.png", "JPCLN002.png"):
        shutil.copy(test_data / "jsrt" / "images" / name, src / name)
    shutil.copy(TEST_FILES / "SC_rgb_rle_2frame.dcm", src / "two.dcm")
    man = build_shards([str(src)], str(tmp_path / "a"), name="p", max_pixels=19_999, **KW)
    assert man["reject_reasons"] == {"too_many_pixels": 3} and man["totals"]["written"] == 0
    man = build_shards([str(src)], str(tmp_path / "b"), name="p", max_pixels=20_000, **KW)
    assert man["reject_reasons"] == {"too_many_pixels": 2} and man["totals"]["samples"] == 2
    assert man["options"]["max_pixels"] == 20_000
    man = build_shards([str(src)], str(tmp_path / "c"), name="p", max_pixels=0, **KW)
    assert man["totals"]["written"] == 3 and man["totals"]["samples"] == 4
    with pytest.raises(BuildError, match="--max-pixels -1"):
        build_shards([str(src)], str(tmp_path / "d"), name="p", max_pixels=-1, **KW)
