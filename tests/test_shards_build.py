"""`shards build` end to end on real images: accounting, rejects, dedup, splits, determinism, resume."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from shards.build import BuildError, build_shards
from shards.process import decode_png_any
from shards.verify import verify_shards

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
REPO = Path(__file__).resolve().parents[1]


def samples_of(out: Path) -> dict[str, tuple[np.ndarray, dict]]:
    got = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                data = tf.extractfile(m).read()
                img, meta = got.get(key, (None, None))
                if ext == "png":
                    img = decode_png_any(data)
                else:
                    meta = json.loads(data)
                got[key] = (img, meta)
    return got


def check_accounting(out: Path, man: dict) -> None:
    """Every input is once in the shards or once in rejects (or counted as a duplicate)."""
    t = man["totals"]
    assert t["inputs"] == t["written"] + t["rejected"] + t["duplicates"]
    f = t["frames"]
    assert f["inputs"] == f["written"] + f["rejected"] + f["duplicates"]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    rejected_sources = [r["source"] for r in rejects if "frame" not in r]
    written_sources = {meta["source"] for _, meta in samples_of(out).values()}
    assert len(rejected_sources) == len(set(rejected_sources)) == t["rejected"]
    assert not written_sources & set(rejected_sources)
    assert len(written_sources) == t["written"]
    assert sum(s["samples"] for s in man["shards"]) == t["samples"] == f["written"]


def test_pydicom_corpus(tmp_path):
    """The ~78 real DICOM test files of pydicom as one corpus: every file accounted for."""
    files = sorted(TEST_FILES.glob("*.dcm"))
    assert len(files) >= 70
    out = tmp_path / "dcm"
    man = build_shards([str(TEST_FILES / "*.dcm")], str(out), name="pydicom", size=64, workers=1,
                       samples_per_shard=64, progress=False)
    check_accounting(out, man)
    t = man["totals"]
    assert t["inputs"] == len(files) and t["duplicates"] == 0
    assert t["written"] >= 55 and t["rejected"] >= 15
    reasons = {json.loads(x)["source"].rsplit("/", 1)[-1]: json.loads(x)["reason"]
               for x in (out / "rejects.jsonl").read_text().splitlines()}
    assert reasons["MR_truncated.dcm"] == "decode_error"
    assert reasons["rtplan.dcm"] == "no_pixel_data"  # a plan, not an image
    assert reasons["no_meta.dcm"] == "no_pixel_data"  # read without file meta (force), then no pixels
    by_file = {}
    for img, meta in samples_of(out).values():
        by_file.setdefault(meta["source"].rsplit("/", 1)[-1], []).append((img, meta))
    for name in ("JPEG2000.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_implicit.dcm"):
        assert name in by_file, f"{name} was not written"
    # lossless JPEG 2000 / RLE / JPEG-LS decode to the same pixels as the uncompressed file
    ref = by_file["MR_small.dcm"][0][0]
    for name in ("MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        assert np.array_equal(by_file[name][0][0], ref), name
    mr = by_file["MR_small.dcm"][0][1]
    assert mr["modality"] == "MR" and mr["bits"] == 16 and mr["window"].startswith("window")
    assert len(by_file["rtdose.dcm"]) == 15  # one sample per frame
    assert sorted(m["frame"] for _, m in by_file["rtdose.dcm"]) == list(range(15))
    ct = by_file["CT_small.dcm"][0][1]
    assert ct["spacing"] and ct["original_spacing"] and ct["patient_id_from"] == "dicom"
    assert verify_shards(str(out)).ok


def _mixed_corpus(root: Path, data: Path) -> Path:
    """Real images in every supported container, plus duplicates and broken files."""
    src = root / "corpus"
    src.mkdir()
    jsrt = sorted((data / "jsrt" / "images").glob("*.png"))
    shutil.copy(jsrt[0], src / "a_dup1.png")
    shutil.copy(jsrt[0], src / "a_dup2.png")
    (src / "b_truncated.png").write_bytes(jsrt[1].read_bytes()[:3000])
    (src / "c_notes.txt").write_text("not an image\n")
    with np.load(data / "medmnist" / "pneumoniamnist_28px_balanced.npz") as z:
        np.savez(src / "d_mnist.npz", **{k: z[k][:6] for k in z.files if k.startswith("train")})
    import nibabel as nib

    mri = sorted((data / "brain_mri" / "images").glob("*.jpg"))[:4]
    vol = np.stack([np.asarray(Image.open(p).convert("L").resize((64, 64))) for p in mri], axis=-1)
    (src / "e_vol.nii.gz").write_bytes(gzip.compress(nib.Nifti1Image(vol.astype(np.int16), np.eye(4)).to_bytes()))
    shutil.copy(TEST_FILES / "rtdose.dcm", src / "f_rtdose.dcm")
    shutil.copy(TEST_FILES / "MR_truncated.dcm", src / "g_truncated.dcm")
    cxr = np.asarray(Image.open(jsrt[2]).convert("L")).astype(np.uint16) * 257 + 3
    Image.fromarray(cxr).save(src / "h_16bit.png")
    sub = src / "sub"
    sub.mkdir()
    Image.open(jsrt[3]).save(sub / "i_cxr.tif")
    Image.open(jsrt[4]).save(sub / "j_cxr.jpg", quality=95)
    return src


def test_mixed_corpus_accounting_dedup_and_determinism(tmp_path, test_data):
    src = _mixed_corpus(tmp_path, test_data)
    kw = dict(name="mixed", size=48, dedup=True, samples_per_shard=10, progress=False)
    man = build_shards([str(src)], str(tmp_path / "w1"), workers=1, **kw)
    check_accounting(tmp_path / "w1", man)
    t = man["totals"]
    assert (t["inputs"], t["written"], t["rejected"], t["duplicates"]) == (11, 7, 3, 1)
    # frames: 1 + 1 (the copy) + 6 npz + 4 slices + 15 rtdose + 1 + 1 + 1; one more duplicate is real:
    # brain_mri's glioma_tumor_image.jpg and glioma_tumor_image1.jpg hold the same pixels (two NIfTI slices)
    assert t["frames"] == {"inputs": 30, "written": 28, "rejected": 0, "duplicates": 2}
    assert man["reject_reasons"] == {"decode_error": 2, "unsupported_format": 1}
    got = samples_of(tmp_path / "w1")
    formats = {m["format"] for _, m in got.values()}
    assert formats == {"png", "npz", "nifti", "dicom", "tiff", "jpeg"}
    sixteen = [(img, m) for img, m in got.values() if m["source"].endswith("h_16bit.png")]
    assert sixteen[0][1]["bits"] == 16 and sixteen[0][0].dtype == np.uint16
    assert [s["samples"] for s in man["shards"]] == [10, 10, 8]
    # the same build with 2 worker processes: byte-identical shards, indexes and manifest
    man2 = build_shards([str(src)], str(tmp_path / "w2"), workers=2, **kw)
    assert man2 == man
    for name in [s["path"] for s in man["shards"]] + [s["index"] for s in man["shards"]] + ["manifest.json",
                                                                                            "rejects.jsonl"]:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_covid_patient_splits_and_metadata(tmp_path, test_data):
    root = test_data / "covid_cxr"
    files = sorted((root / "images").glob("ieee_*.jpg"))[:80]
    man = build_shards([str(p) for p in files], str(tmp_path / "covid"), name="covid", size=64, workers=1,
                       metadata=str(root / "metadata.csv"), val_fraction=0.25, test_fraction=0.25,
                       samples_per_shard=20, progress=False)
    assert set(man["splits"]) == {"train", "val", "test"} and sum(man["splits"].values()) == 80
    assert {s["split"] for s in man["shards"]} == {"train", "val", "test"}
    got = samples_of(tmp_path / "covid")
    split_of_patient = {}
    for _, m in got.values():
        assert split_of_patient.setdefault(m["patient"], m["split"]) == m["split"]
        assert m["patient_id_from"] == "metadata" and "ieee" not in m["patient"]
    assert len(split_of_patient) < 80  # several images per patient: the split really is per patient
    with_age = [m for _, m in got.values() if m["age"] is not None]
    assert len(with_age) >= 40 and {m["sex"] for _, m in got.values()} >= {"M", "F"}
    assert sum(bool(m["report"]) for _, m in got.values()) >= 40
    assert all("patient_id" not in m["meta"] for _, m in got.values())  # never the raw id
    assert verify_shards(str(tmp_path / "covid")).ok


def _kill_build_cmd(files_csv: Path, out: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "dinotrain", "shards", "build", str(files_csv), "--out", str(out),
            "--name", "k", "--root", str(root), "--size", "160", "--samples-per-shard", "6", "--workers", "1",
            "--no-progress"]


def test_kill9_then_resume_gives_the_uninterrupted_build(tmp_path, test_data):
    root = test_data / "covid_cxr"
    listing = tmp_path / "listing.csv"
    rows = ["path"] + [str(p) for p in sorted((root / "images").glob("*.jpg"))[:72]]
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the listing names absolute paths under the data folder: --root confines its rows there
    proc = subprocess.Popen(_kill_build_cmd(listing, out, root), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / ".build" / "ckpt-000002.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before the kill: make it longer"
    done = {p.name: p.stat().st_ino for p in out.glob("*.tar")}
    assert len(done) >= 3
    # rerun the same command (here with 2 workers): finishes without redoing finished shards
    res = subprocess.run(_kill_build_cmd(listing, out, root)[:-3] + ["--workers", "2", "--no-progress"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("written 72 (72 samples in 12 shards)")
    assert {n: (out / n).stat().st_ino for n in done} == done
    assert not (out / ".build").exists()
    ref = tmp_path / "ref"
    build_shards([str(listing)], str(ref), name="k", size=160, samples_per_shard=6, workers=1, progress=False,
                 root=str(root))
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    for tar in ref.glob("*.tar"):
        assert (out / tar.name).read_bytes() == tar.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())


def test_fatal_errors_and_overwrite(tmp_path, test_data):
    with pytest.raises(BuildError, match="does not exist"):
        build_shards([str(tmp_path / "nope")], str(tmp_path / "o"), name="x", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match="no input files"):
        build_shards([str(tmp_path / "empty")], str(tmp_path / "o"), name="x", progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError, match="not writable"):
        build_shards([str(TEST_FILES / "CT_small.dcm")], str(tmp_path / "afile" / "o"), name="x", progress=False)
    with pytest.raises(BuildError, match="--name"):
        build_shards([str(TEST_FILES / "CT_small.dcm")], str(tmp_path / "o"), name="a.b", progress=False)
    # CLI: a fatal problem exits non-zero with a message naming it
    res = subprocess.run([sys.executable, "-m", "dinotrain", "shards", "build", str(tmp_path / "empty"), "--out",
                          str(tmp_path / "o"), "--name", "x"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 1 and "no input files" in res.stderr and str(tmp_path / "empty") in res.stderr

    out = tmp_path / "o"
    one = [str(TEST_FILES / "CT_small.dcm")]
    m1 = build_shards(one, str(out), name="x", size=32, progress=False)
    assert build_shards(one, str(out), name="x", size=32, progress=False) == m1  # rerun: already built
    with pytest.raises(BuildError, match="--overwrite"):
        build_shards(one, str(out), name="x", size=16, progress=False)
    m2 = build_shards(one, str(out), name="x", size=16, overwrite=True, progress=False)
    assert m2["options"]["size"] == 16 and verify_shards(str(out)).ok


def test_verify_catches_tampering(tmp_path, test_data):
    files = [str(p) for p in sorted((test_data / "jsrt" / "images").glob("*.png"))[:6]]
    out = tmp_path / "v"
    build_shards(files, str(out), name="v", size=32, samples_per_shard=3, workers=1, progress=False)
    assert verify_shards(str(out)).ok
    # a changed byte inside a PNG
    tar = out / "v-train-000001.tar"
    blob = bytearray(tar.read_bytes())
    blob[700] ^= 0xFF
    tar.write_bytes(bytes(blob))
    # a missing index, and a stray tar with a path-traversal member
    (out / "v-train-000000.idx").unlink()
    with tarfile.open(out / "v-train-000009.tar", "w") as tf:
        ti = tarfile.TarInfo("../evil.png")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    rep = verify_shards(str(out))
    text = rep.text()
    assert not rep.ok and "FAILED" in text
    assert "v-train-000001.tar: sha256 differs" in text
    assert "v-train-000000.tar: index v-train-000000.idx missing" in text
    assert "v-train-000009.tar: in OUT but not in manifest.json" in text
    res = subprocess.run([sys.executable, "-m", "dinotrain", "shards", "verify", str(out), "--no-progress"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 1 and "sha256 differs" in res.stdout


def test_cli_listing_id_column_and_shard_list(tmp_path, test_data):
    """A CSV listing with relative paths as SOURCE, metadata joined by an id column, via the CLI."""
    from shards.manifest import shard_list

    imgs = tmp_path / "data" / "imgs"
    imgs.mkdir(parents=True)
    src = sorted((test_data / "ham10000_derm" / "images").glob("*.jpg"))[:5]
    for p in src:
        shutil.copy(p, imgs / p.name)
    (tmp_path / "data" / "list.csv").write_text("path\n" + "".join(f"imgs/{p.name}\n" for p in src))
    (tmp_path / "meta.csv").write_text("image_id,age,sex,dx,patient\n" + "".join(
        f"{p.stem},{40 + i},{'MF'[i % 2]},nv,P{i // 2}\n" for i, p in enumerate(src)))
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "dinotrain", "shards", "build", str(tmp_path / "data" / "list.csv"), "--out", str(out),
         "--name", "derm", "--metadata", str(tmp_path / "meta.csv"), "--id-column", "image_id",
         "--patient-column", "patient", "--channels", "3", "--size", "64", "--workers", "1",
         "--samples-per-shard", "2"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "written 5 (5 samples in 3 shards), rejected 0, duplicates 0"
    assert "img/s" in res.stderr and "5/5" in res.stderr  # the progress bar, with its rate
    got = sorted(samples_of(out).values(), key=lambda x: x[1]["age"])
    assert [m["age"] for _, m in got] == [40, 41, 42, 43, 44]
    assert [m["sex"] for _, m in got] == ["M", "F", "M", "F", "M"]
    assert all(img.shape == (64, 64, 3) and m["channels"] == 3 and m["meta"]["dx"] == "nv" for img, m in got)
    assert got[0][1]["patient"] == got[1][1]["patient"] != got[2][1]["patient"]
    shards = shard_list(str(out), "train")
    assert [s["samples"] for s in shards] == [2, 2, 1]
    assert all(Path(s["tar"]).is_file() and Path(s["idx"]).is_file() for s in shards)


def test_worker_killed_mid_build_is_retried(tmp_path, test_data):
    """SIGKILL one worker process (as the OOM killer would): the build retries its inputs and
    finishes with the same bytes as a single-process build."""
    import multiprocessing
    import threading

    files = [str(p) for p in sorted((test_data / "covid_cxr" / "images").glob("*.jpg"))[:30]]
    kw = dict(name="c", size=96, samples_per_shard=5, progress=False)
    out = tmp_path / "killed"
    killed = []

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            if (out / ".build" / "ckpt-000000.json").exists():
                kids = multiprocessing.active_children()
                if kids:
                    os.kill(kids[0].pid, signal.SIGKILL)
                    killed.append(kids[0].pid)
            time.sleep(0.002)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    man = build_shards(files, str(out), workers=2, **kw)
    t.join()
    assert killed, "no worker was killed: the build was too quick"
    ref = build_shards(files, str(tmp_path / "ref"), workers=1, **kw)
    assert man == ref and man["totals"]["written"] == 30
    for s in ref["shards"]:
        assert (out / s["path"]).read_bytes() == (tmp_path / "ref" / s["path"]).read_bytes()
