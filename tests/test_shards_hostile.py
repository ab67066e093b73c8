"""`shards build` / `shards verify` against the messy inputs of a real archive (issue 15).

Every hostile input is made in the test itself (FIFOs, device symlinks, non-UTF-8 names, edited
or contradictory CSVs, hidden folders, 1x1 images); the images are real radiographs (JSRT),
shrunk so that each build takes a moment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.build import BuildError, Placement, build_shards
from shards.demographics import age_value, sex_value
from shards.options import BuildOptions
from shards.samples import Sample
from shards.verify import verify_shards

REPO = Path(__file__).resolve().parents[1]
KW = dict(size=32, workers=1, progress=False)


@pytest.fixture(scope="module")
def cxrs(test_data) -> list[np.ndarray]:
    """Eight distinct real radiographs, 48x48, 8-bit."""
    files = sorted((test_data / "jsrt" / "images").glob("*.png"))[:8]
    return [np.asarray(Image.open(p).convert("L").resize((48, 48), Image.Resampling.BICUBIC)) for p in files]


def write_images(folder: Path, cxrs: list[np.ndarray], names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, n in enumerate(names):
        Image.fromarray(cxrs[k % len(cxrs)]).save(folder / n)
        out.append(folder / n)
    return out


def rejects(out: Path) -> dict[str, dict]:
    return {json.loads(x)["source"].rsplit("/", 1)[-1]: json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()}


def samples_meta(out: Path) -> list[dict]:
    got = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            got += [json.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json")]
    return got


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dinotrain", "shards", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=timeout)


def test_fifo_and_device_symlink_are_rejected_before_any_read(tmp_path, cxrs):
    src = tmp_path / "in"
    write_images(src, cxrs, ["a.png", "b.png"])
    os.mkfifo(src / "x.png")  # nobody ever writes to it: one read would block forever
    os.symlink("/dev/zero", src / "zero.png")  # one read would fill the memory
    out = tmp_path / "out"
    # through the CLI with 2 workers and a timeout: a blocked build fails here instead of hanging
    res = cli("build", str(src), "--out", str(out), "--name", "f", "--size", "32", "--workers", "2",
              "--no-progress", timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("written 2 (2 samples in 1 shards), rejected 2 "
                                                          "(not_a_regular_file 2)")
    rej = rejects(out)
    assert rej["x.png"]["reason"] == "not_a_regular_file" and "FIFO" in rej["x.png"]["error"]
    assert rej["zero.png"]["reason"] == "not_a_regular_file"
    assert "character device" in rej["zero.png"]["error"] and "symlink" in rej["zero.png"]["error"]
    assert verify_shards(str(out)).ok
    # a FIFO given as the metadata CSV is refused the same way, before it is opened
    os.mkfifo(tmp_path / "meta.csv")
    with pytest.raises(BuildError, match="not a regular file"):
        build_shards([str(src / "a.png")], str(tmp_path / "o2"), name="f", metadata=str(tmp_path / "meta.csv"), **KW)


def test_size_cap_rejects_a_huge_regular_file_without_reading_it(tmp_path, cxrs):
    src = tmp_path / "in"
    write_images(src, cxrs, ["a.png"])
    with open(src / "huge.png", "wb") as f:  # 64 GiB, sparse: reading it would take minutes and all memory
        f.truncate(64 << 30)
    man = build_shards([str(src)], str(tmp_path / "out"), name="cap", max_file_mb=1, **KW)
    assert man["totals"]["written"] == 1 and man["reject_reasons"] == {"file_too_large": 1}
    assert "68719476736 bytes" in rejects(tmp_path / "out")["huge.png"]["error"]
    with pytest.raises(BuildError, match="--max-file-mb"):
        build_shards([str(src)], str(tmp_path / "o2"), name="cap", max_file_mb=0, **KW)


def test_non_utf8_file_name_is_built_and_kept_losslessly(tmp_path, cxrs):
    src = tmp_path / "in"
    write_images(src, cxrs, ["a.png"])
    raw = os.path.join(os.fsencode(src), b"caf\xe9.png")  # Latin-1 name, as on an old share
    Image.fromarray(cxrs[1]).save(os.fsdecode(raw), format="PNG")
    kw = dict(KW, name="u")
    man = build_shards([str(src)], str(tmp_path / "w1"), **kw)
    assert man["totals"]["written"] == 2 and man["totals"]["rejected"] == 0
    sources = {m["source"] for m in samples_meta(tmp_path / "w1")}
    assert raw in {os.fsencode(s) for s in sources}  # the exact bytes of the name come back
    assert verify_shards(str(tmp_path / "w1")).ok
    # the same with worker processes: byte-identical
    build_shards([str(src)], str(tmp_path / "w2"), **{**kw, "workers": 2})
    for name in ["manifest.json", *(s["path"] for s in man["shards"])]:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def _meta_build(tmp_path: Path, cxrs, rows: list[str], **kw) -> tuple[Path, Path]:
    src = tmp_path / "data"
    write_images(src / "images", cxrs, ["a.png", "b.png", "c.png"])
    (src / "meta.csv").write_text("path,age,sex\n" + "".join(r + "\n" for r in rows))
    return src, src / "meta.csv"


def test_an_edited_metadata_csv_is_not_silently_ignored(tmp_path, cxrs):
    src, meta = _meta_build(tmp_path, cxrs, ["images/a.png,40,M", "images/b.png,50,F", "images/c.png,60,F"])
    out = tmp_path / "out"
    args = ["build", str(src / "images"), "--out", str(out), "--name", "m", "--metadata", str(meta), "--size", "32",
            "--workers", "1", "--no-progress"]
    assert cli(*args).returncode == 0
    assert sorted(m["age"] for m in samples_meta(out)) == [40, 50, 60]
    meta.write_text(meta.read_text().replace(",40,M", ",41,M"))
    res = cli(*args)
    assert res.returncode == 1
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "CSV changed" in err and str(meta) in err and "--overwrite" in err
    assert cli(*args, "--overwrite").returncode == 0
    assert sorted(m["age"] for m in samples_meta(out)) == [41, 50, 60]
    # a kill during the rebuild is not resumed with a CSV edited again: the checkpoints say so
    assert json.loads((out / "manifest.json").read_text())["options"]["csv_sha256"][str(meta)]


def test_contradicting_rows_for_one_path_name_their_lines(tmp_path, cxrs):
    rows = ["images/a.png,40,M", "images/b.png,50,F", "images/a.png,40,M", "images/a.png,44,M", "images/c.png,60,F"]
    src, meta = _meta_build(tmp_path, cxrs, rows)
    kw = dict(KW, name="d", metadata=str(meta))
    with pytest.raises(BuildError, match=r"lines 2 and 5 for .*a\.png.*--duplicate-rows"):
        build_shards([str(src / "images")], str(tmp_path / "o"), **kw)
    assert not (tmp_path / "o").exists()  # refused before OUT was made
    for policy, age in (("first", 40), ("last", 44)):
        build_shards([str(src / "images")], str(tmp_path / policy), duplicate_rows=policy, **kw)
        ages = {m["source"].rsplit("/", 1)[-1]: m["age"] for m in samples_meta(tmp_path / policy)}
        assert ages == {"a.png": age, "b.png": 50, "c.png": 60}
    # the same through an id column
    (tmp_path / "ids.csv").write_text("image,age\na,40\nb,50\na,41\n")
    with pytest.raises(BuildError, match="lines 2 and 4 for a"):
        build_shards([str(src / "images")], str(tmp_path / "o"), **dict(kw, metadata=str(tmp_path / "ids.csv"),
                                                                           id_column="image"))


def test_age_and_sex_values_parsed_counted_and_mapped(tmp_path, cxrs):
    names = [f"{k}.png" for k in range(8)]
    write_images(tmp_path / "in", cxrs, names)
    values = [("045Y", "M"), ("6M", "F"), ("45 years", "Other"), ("abc", "1"), ("-3", "2"), ("200", "2"),
              ("61.5", "female"), ("", "U")]
    (tmp_path / "meta.csv").write_text("path,age,sex\n" + "".join(
        f"in/{n},{a},{s}\n" for n, (a, s) in zip(names, values)))
    kw = dict(KW, name="demo", metadata=str(tmp_path / "meta.csv"))
    man = build_shards([str(tmp_path / "in")], str(tmp_path / "o"), **kw)
    got = {m["source"].rsplit("/", 1)[-1]: m for m in samples_meta(tmp_path / "o")}
    assert [got[n]["age"] for n in names] == [45, 0.5, 45, None, None, None, 61.5, None]
    assert [got[n]["sex"] for n in names] == ["M", "F", "O", None, None, None, "F", None]
    assert got["3.png"]["age_raw"] == "abc" and got["5.png"]["age_raw"] == "200" and got["4.png"]["sex_raw"] == "2"
    assert "age_raw" not in got["0.png"] and "sex_raw" not in got["7.png"]  # empty / U: simply unknown
    issues = man["metadata"]["issues"]
    assert issues == {"age_implausible": {"inputs": 2, "values": {"-3": 1, "200": 1}},
                      "age_unparsed": {"inputs": 1, "values": {"abc": 1}},
                      "sex_unknown_code": {"inputs": 3, "values": {"2": 2, "1": 1}}}
    res = cli("build", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), "--name", "demo", "--metadata",
              str(tmp_path / "meta.csv"), "--size", "32", "--workers", "1", "--no-progress")
    assert res.returncode == 0 and "sex codes not understood ('2' x2, '1' x1)" in res.stderr
    assert "--sex-map" in res.stderr and "implausible ages" in res.stderr
    # the fix the message names
    man = build_shards([str(tmp_path / "in")], str(tmp_path / "o3"), sex_map={"1": "M", "2": "F"}, **kw)
    got = {m["source"].rsplit("/", 1)[-1]: m["sex"] for m in samples_meta(tmp_path / "o3")}
    assert [got[n] for n in names[3:6]] == ["M", "F", "F"] and "sex_unknown_code" not in man["metadata"]["issues"]


def test_age_and_sex_parsers():
    assert [age_value(v)[0] for v in ("065Y", "018M", "003W", "010D", "45", "45.5", "45 yrs", "2 months")] == [
        65, 1.5, 0.06, 0.03, 45, 45.5, 45, 0.17]
    assert [age_value(v) for v in ("", None, "abc", "nan", "1e3", "-3", "126", "45 parsecs")] == [
        (None, None), (None, None), (None, "unparsed"), (None, "unparsed"), (None, "unparsed"),
        (None, "implausible"), (None, "implausible"), (None, "unparsed")]
    assert [sex_value(v) for v in ("m", " FEMALE ", "O", "U", "unknown", "1", "")] == [
        ("M", None), ("F", None), ("O", None), (None, None), (None, None), (None, "unknown_code"), (None, None)]
    assert sex_value("1", {"1": "M"}) == ("M", None) and sex_value("9", {"9": "U"}) == (None, None)


def test_metadata_coverage_and_masks_under_a_dataset_root(tmp_path, cxrs):
    root = tmp_path / "ds"
    write_images(root / "images", cxrs, ["a.png", "b.png", "c.png"])
    write_images(root / "masks", cxrs, ["a.png", "b.png"])
    (root / "metadata.csv").write_text("path,age,mask_paths\nimages/a.png,40,masks/a.png\n"
                                       "images/b.png,50,masks/b.png\nimages/gone.png,60,\n")
    res = cli("build", str(root), "--out", str(tmp_path / "o"), "--name", "ds", "--metadata",
              str(root / "metadata.csv"), "--size", "32", "--workers", "1", "--no-progress")
    assert res.returncode == 0, res.stderr
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    meta = man["metadata"]
    # inputs: 3 images + 2 masks + the CSV itself (rejected: not an image)
    assert (man["totals"]["inputs"], man["totals"]["written"]) == (6, 5)
    # the masks join their image's row by file name (a unique name joins): one more reason to warn
    assert (meta["rows"], meta["rows_without_input"], meta["inputs_with_row"], meta["inputs_without_row"]) == (
        3, 1, 4, 2)
    assert meta["rows_without_input_examples"] == ["line 4: images/gone.png"]
    assert meta["mask_files_as_inputs"] == 2
    assert "2 input files are masks named in the metadata's mask_paths" in res.stderr
    assert "1 of 3 metadata rows match no input file (e.g. line 4: images/gone.png)" in res.stderr
    assert "2 input files have no metadata row" in res.stderr
    # pointed at the images folder: no warning about masks, every image has its row
    man = build_shards([str(root / "images")], str(tmp_path / "o2"), name="ds", metadata=str(root / "metadata.csv"),
                       **KW)
    assert man["metadata"]["mask_files_as_inputs"] == 0 and man["metadata"]["inputs_without_row"] == 1


def test_hidden_files_and_folders_are_counted(tmp_path, cxrs):
    src = tmp_path / "in"
    write_images(src, cxrs, ["a.png", ".x.png"])
    write_images(src / ".git" / "objects", cxrs, ["b.png", "c.png"])
    write_images(src / "sub", cxrs, ["d.png"])
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    man = build_shards([str(src)], str(tmp_path / "o"), name="h", **KW)
    t = man["totals"]
    assert (t["inputs"], t["written"], t["skipped_hidden"], t["skipped_system"]) == (2, 2, 2, 1)
    assert sorted(Path(p).name for p in man["skipped_examples"]) == [".DS_Store", ".git", ".x.png"]
    from shards.manifest import final_line

    assert final_line(man).endswith("duplicates 0, skipped hidden 2")


def test_dedup_names_every_duplicate_and_its_original(tmp_path, cxrs):
    src = tmp_path / "in"
    names = ["a.png", "b.png", "c.png", "d.png", "e.png"]
    for n, k in zip(names, [0, 1, 0, 1, 0]):
        write_images(src, [cxrs[k]], [n])
    (src / "f.png").write_bytes(b"broken")
    man = build_shards([str(src)], str(tmp_path / "o"), name="dd", dedup=True, **KW)
    assert (man["totals"]["written"], man["totals"]["duplicates"], man["totals"]["rejected"]) == (2, 3, 1)
    lines = [json.loads(x) for x in (tmp_path / "o" / "duplicates.jsonl").read_text().splitlines()]
    pairs = sorted((Path(x["source"]).name, Path(x["duplicate_of"]).name) for x in lines)
    assert pairs == [("c.png", "a.png"), ("d.png", "b.png"), ("e.png", "a.png")]
    # every input accounted for by name: in a shard, in rejects.jsonl or in duplicates.jsonl
    named = {m["source"] for m in samples_meta(tmp_path / "o")} | {x["source"] for x in lines} | {
        json.loads(x)["source"] for x in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()}
    assert named == {str(p) for p in src.iterdir()}
    assert verify_shards(str(tmp_path / "o")).ok


def test_tiny_images_are_rejected_below_min_size(tmp_path, cxrs):
    src = tmp_path / "in"
    write_images(src, cxrs, ["a.png"])
    Image.fromarray(np.full((1, 1), 77, np.uint8)).save(src / "dot.png")
    Image.fromarray(cxrs[0][:5, :40]).save(src / "strip.png")
    man = build_shards([str(src)], str(tmp_path / "o"), name="t", **KW)
    assert man["totals"]["written"] == 1 and man["reject_reasons"] == {"too_small": 2}
    assert rejects(tmp_path / "o")["dot.png"]["error"] == "1x1 pixels, below --min-size 8"
    man = build_shards([str(src)], str(tmp_path / "o2"), name="t", min_size=0, **KW)
    assert man["totals"]["written"] == 3
    man = build_shards([str(src)], str(tmp_path / "o3"), name="t", min_size=48, **KW)
    assert man["totals"]["written"] == 1


def test_out_inside_a_source_is_refused_up_front(tmp_path, cxrs):
    src = tmp_path / "in"
    write_images(src, cxrs, ["a.png"])
    for source, out in ((src, src / "shards"), (src, src), (tmp_path / "*", tmp_path / "in" / "shards"),
                        (tmp_path / "**" / "*.png", tmp_path / "x" / "y")):
        with pytest.raises(BuildError, match="is inside SOURCE"):
            build_shards([str(source)], str(out), name="o", **KW)
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]  # nothing was created
    res = cli("build", str(src), "--out", str(src / "shards"), "--name", "o")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and "--out" in res.stderr
    # a sibling folder, and a glob that cannot reach OUT, are fine
    assert build_shards([str(src)], str(tmp_path / "shards"), name="o", **KW)["totals"]["written"] == 1
    assert build_shards([str(src / "*.png")], str(src / "shards"), name="o", **KW)["totals"]["written"] == 1


def test_nothing_written_exits_non_zero_and_the_summary_lists_every_reason(tmp_path, cxrs):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (src / "c.txt").write_text("notes")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(src / "d.png")
    os.mkfifo(src / "e.png")
    res = cli("build", str(src), "--out", str(tmp_path / "o"), "--name", "r", "--workers", "1", "--no-progress")
    assert res.returncode == 1
    assert res.stdout.strip().splitlines()[-1] == (
        "written 0 (0 samples in 0 shards), rejected 5 (decode_error 1, empty_file 1, not_a_regular_file 1, "
        "too_small 1, unsupported_format 1), duplicates 0")
    assert "nothing was written" in res.stderr
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["totals"]["rejected"] == 5


def test_verify_checks_the_manifest_totals_against_the_shards(tmp_path, cxrs):
    src = tmp_path / "in"
    write_images(src, cxrs, [f"{k}.png" for k in range(5)])
    out = tmp_path / "o"
    build_shards([str(src)], str(out), name="v", samples_per_shard=2, **KW)
    assert verify_shards(str(out)).ok
    good = (out / "manifest.json").read_text()
    for edit, finding in ((lambda m: m["totals"].update(written=999), "totals.written: the shards hold 5"),
                          (lambda m: m["modalities"].update(CT=5), "modalities: shards hold"),
                          (lambda m: m["totals"]["frames"].update(written=4), "totals.frames.written"),
                          (lambda m: m["reject_reasons"].update(decode_error=1), "reject_reasons add up to 1")):
        man = json.loads(good)
        edit(man)
        (out / "manifest.json").write_text(json.dumps(man))
        rep = verify_shards(str(out))
        assert not rep.ok and finding in rep.text(), rep.text()
    (out / "manifest.json").write_text(good)
    res = cli("verify", str(out), "--no-progress")
    assert res.returncode == 0 and "OK, 3 shards, 5 samples" in res.stdout


def test_placement_is_the_one_shard_and_dedup_rule():
    plan = Placement("n", 2, dedup=True)

    def s(frame, split="train", sha="x"):
        return Sample(key=f"k{frame}", frame=frame, split=split, src_sha=sha, sha256="", modality="m", dataset="d")

    got = [plan.place(s(0, sha="a"), "p"), plan.place(s(1, sha="a"), "p"), plan.place(s(0, sha="b"), "q"),
           plan.place(s(0, "val", "c"), "r"), plan.place(s(0, sha="d"), "t")]
    assert got == ["n-train-000000", None, "n-train-000000", "n-val-000000", "n-train-000001"]
    dup = s(1, sha="a")
    plan.place(dup, "z")
    assert dup.duplicate_of == ("p", 0)


def test_build_options_are_spelled_once():
    """The CLI's defaults are BuildOptions' defaults, one flag per field."""
    import argparse
    from dataclasses import fields

    from shards.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["build", "x", "--out", "o", "--name", "n"])
    assert BuildOptions.from_args(args) == BuildOptions(name="n")
    args = p.parse_args(["build", "x", "--out", "o", "--name", "n", "--sex-map", "1=m,2=F", "--ct-window", "40,400",
                         "--no-progress", "--min-size", "0", "--max-file-mb", "2.5", "--duplicate-rows", "last"])
    o = BuildOptions.from_args(args)
    assert (o.sex_map, o.ct_window, o.progress, o.min_size, o.max_file_mb, o.duplicate_rows) == (
        {"1": "M", "2": "F"}, (40.0, 400.0), False, 0, 2.5, "last")
    help_text = p._subparsers._group_actions[0].choices["build"].format_help()
    for f in fields(BuildOptions):
        flag = "--no-progress" if f.name == "progress" else "--" + f.name.replace("_", "-")
        assert flag in help_text, flag
    with pytest.raises(TypeError, match="unknown option"):
        build_shards(["x"], "o", name="n", sise=3)
    with pytest.raises(BuildError, match="--samples-per-shard 0"):
        build_shards(["x"], "o", name="n", samples_per_shard=0)


def test_interrupted_dedup_build_resumes_to_the_same_bytes(tmp_path, cxrs, monkeypatch):
    """An exception mid-build (Ctrl-C) leaves the finished shards and checkpoints, no partial shard;
    the rerun re-plans duplicates from the checkpoints and ends byte-identical, duplicates.jsonl too."""
    import shards.build as sb

    src = tmp_path / "in"
    names = [f"{k:02d}.png" for k in range(14)]
    for k, n in enumerate(names):
        write_images(src, [cxrs[k % 5]], [n])  # 5 distinct images, 9 duplicates
    kw = dict(KW, name="r", dedup=True, samples_per_shard=2)
    ref = build_shards([str(src)], str(tmp_path / "ref"), **kw)
    real = sb.make_samples

    def interrupted(task):
        if task[0] == 11:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(sb, "make_samples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_shards([str(src)], str(tmp_path / "out"), **kw)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.tar")) == ["r-train-000000.tar", "r-train-000001.tar"]
    assert not list((out / ".build" / "partial").iterdir()) and not (out / "manifest.json").exists()
    monkeypatch.setattr(sb, "make_samples", real)
    assert build_shards([str(src)], str(out), **dict(kw, workers=2)) == ref
    for name in ["manifest.json", "rejects.jsonl", "duplicates.jsonl", *(s["path"] for s in ref["shards"])]:
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert len((out / "duplicates.jsonl").read_text().splitlines()) == 9
