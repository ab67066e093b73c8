"""Shards read back with webdataset.WebDataset and DALI's fn.readers.webdataset (CPU), inspect, S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shards.build import build_shards
from shards.inspect import format_stats, inspect_shards
from shards.process import decode_png_any
from shards.verify import verify_shards

REPO = Path(__file__).resolve().parents[1]


def _tar_samples(out: Path) -> list[tuple[str, np.ndarray, dict]]:
    got = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            names = tf.getnames()
            for n in names[::2]:
                key = n.split(".")[0]
                got.append((key, decode_png_any(tf.extractfile(n).read()), json.loads(tf.extractfile(f"{key}.json").read())))
    return got


def test_webdataset_reads_shards(cxr_shards):
    import webdataset as wds

    urls = [str(p) for p in sorted(cxr_shards.glob("*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    ref = _tar_samples(cxr_shards)
    got = list(ds)
    assert [s["__key__"] for s in got] == [k for k, _, _ in ref]
    for s, (_, img, meta) in zip(got, ref):
        assert set(s) >= {"png", "json"} and json.loads(s["json"]) == meta
        assert np.array_equal(decode_png_any(s["png"]), img)


def test_dali_reads_shards_with_index(cxr_shards):
    from nvidia.dali import fn, pipeline_def, types

    tars = sorted(cxr_shards.glob("*.tar"))
    idxs = [str(p.with_suffix(".idx")) for p in tars]

    @pipeline_def(batch_size=16, num_threads=1, device_id=None)
    def pipe():
        png, js = fn.readers.webdataset(paths=[str(p) for p in tars], index_paths=idxs, ext=["png", "json"],
                                        missing_component_behavior="error", random_shuffle=False, name="r")
        return fn.decoders.image(png, device="cpu", output_type=types.GRAY), js

    p = pipe()
    p.build()
    assert p.epoch_size("r") == 48
    ref = _tar_samples(cxr_shards)
    seen = []
    for _ in range(3):
        imgs, jss = p.run()
        for i in range(len(imgs)):
            img = np.asarray(imgs.at(i))[..., 0]
            meta = json.loads(bytes(np.asarray(jss.at(i))))
            seen.append((meta["key"], img))
    assert [k for k, _ in seen] == [k for k, _, _ in ref]
    for (_, img), (_, ref_img, _) in zip(seen, ref):
        assert np.array_equal(img, ref_img)


def test_inspect_table(cxr_shards):
    stats = inspect_shards(str(cxr_shards))
    assert stats["samples"] == 48 and stats["counts"]["split"] == {"train": 48}
    assert stats["age_coverage"] >= 46 / 48 and stats["sex_coverage"] == 1.0
    assert set(stats["counts"]["sex"]) == {"M", "F"}
    assert stats["counts"]["size"] == {"<=128 short side": 48}
    assert sum(v for k, v in stats["counts"]["label"].items()) >= 48
    text = format_stats(stats)
    assert "48 samples in 3 shards" in text and "age known for" in text
    res = subprocess.run([sys.executable, "-m", "dinotrain", "shards", "inspect", str(cxr_shards)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0 and "modality" in res.stdout and "CR" in res.stdout


@pytest.mark.s3
def test_s3_output_sources_and_verify(s3_env, test_data, tmp_path):
    fs = s3_env.filesystem()
    bucket = s3_env.bucket
    files = sorted((test_data / "jsrt" / "images").glob("*.png"))[:10]
    # s3:// sources (uploaded real images) and s3:// output through the endpoint in the environment
    for p in files:
        fs.put_file(str(p), f"{bucket}/raw/{p.name}")
    out = f"s3://{bucket}/shards/jsrt"
    man = build_shards([f"s3://{bucket}/raw/"], out, name="jsrt", size=64, samples_per_shard=4, workers=1,
                       progress=False)
    assert man["totals"]["written"] == 10 and [s["samples"] for s in man["shards"]] == [4, 4, 2]
    names = sorted(x.rsplit("/", 1)[-1] for x in fs.ls(f"{bucket}/shards/jsrt", refresh=True))
    assert names == sorted([s["path"] for s in man["shards"]] + [s["index"] for s in man["shards"]]
                           + ["manifest.json", "rejects.jsonl"])
    rep = verify_shards(out)
    assert rep.ok and rep.samples == 10, rep.text()
    # same pixels as a local build of the same files
    local = tmp_path / "local"
    build_shards([str(p) for p in files], str(local), name="jsrt", size=64, samples_per_shard=4, workers=1,
                 progress=False)
    remote = {}
    for s in man["shards"]:
        with fs.open(f"{bucket}/shards/jsrt/{s['path']}", "rb") as f, tarfile.open(fileobj=f) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    remote[meta["source"].rsplit("/", 1)[-1]] = meta["sha256"]
    assert remote == {m["source"].rsplit("/", 1)[-1]: m["sha256"] for _, _, m in _tar_samples(local)}
    # explicit --storage-options instead of the environment, through the CLI, then verify via the CLI
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env["PYTHONPATH"] = str(REPO)
    so = json.dumps({"client_kwargs": {"endpoint_url": s3_env.url}})
    res = subprocess.run([sys.executable, "-m", "dinotrain", "shards", "build", str(files[0]), "--out",
                          f"s3://{bucket}/shards/one", "--name", "one", "--size", "32", "--workers", "1",
                          "--storage-options", so, "--no-progress"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("written 1 (1 samples in 1 shards), rejected 0, duplicates 0")
    res = subprocess.run([sys.executable, "-m", "dinotrain", "shards", "verify", f"s3://{bucket}/shards/one",
                          "--storage-options", so, "--no-progress"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "OK, 1 shards, 1 samples" in res.stdout
