"""`shards build --codec j2k`: lossless JPEG 2000 samples, readable wherever PNG samples are.

The reference for every reader is the PNG shard set built from the same images with the same
options: same keys, same pixels (sha256), and the same loader and eval tensors bit for bit.
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
import torch

from benchmarks.gpu.decode import decode as dali_decode
from benchmarks.gpu.decode import max_abs_diff, reference_decode
from shards import codecs
from shards.build import BuildError, build_shards
from shards.inspect import format_stats, inspect_shards
from shards.verify import verify_shards
from tests.shard_fixtures import spread

REPO = Path(__file__).resolve().parents[1]
N = 8


def _build(files: list[str], out: Path, codec: str, bits: int, workers: int = 1) -> dict:
    return build_shards(files, str(out), name=f"cx{bits}", size=112, bits=bits, workers=workers,
                        modality="CR", samples_per_shard=3, codec=codec, progress=False)


@pytest.fixture(scope="module")
def sets(test_data, tmp_path_factory) -> dict[tuple[str, int], Path]:
    """{(codec, bits): OUT} for PNG and J2K, 8- and 16-bit, from the same 8 JSRT radiographs."""
    files = spread(list((test_data / "jsrt" / "images").iterdir()), N)
    base = tmp_path_factory.mktemp("codecs")
    out = {}
    for bits in (8, 16):
        for codec in codecs.CODECS:
            out[(codec, bits)] = base / f"{codec}{bits}"
            _build(files, out[(codec, bits)], codec, bits)
    return out


def _members(out: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of every shard in OUT."""
    got: dict[str, dict[str, bytes]] = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                got.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return got


def test_j2k_round_trip_is_bit_exact_through_pillow_and_dali_cpu():
    rng = np.random.default_rng(3)
    a8 = rng.integers(0, 256, (61, 83), dtype=np.uint8)
    a16 = rng.integers(0, 65536, (47, 90), dtype=np.uint16)
    a16[0, :2] = (0, 65535)
    a12 = (rng.integers(0, 4096, (33, 35)) * np.arange(1, 36) % 4096).astype(np.uint16)  # a 12-bit detector
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    encoded = [codecs.encode(a, "j2k") for a in (a8, a16, a12, rgb)]
    assert all(codecs.codec_of(b) == "j2k" for b in encoded)
    for a, b in zip((a8, a16, a12, rgb), encoded):
        back = codecs.decode(b)
        assert back.dtype == a.dtype and np.array_equal(back, a)
        assert codecs.encode(a, "j2k") == b  # deterministic bytes
    # DALI's CPU decoder (the loader's, and the reference half of gpu_check): 16 bits exact, 8 bits x 257
    got = dali_decode(encoded[:3], "cpu")
    ref = reference_decode(encoded[:3])
    assert max_abs_diff(ref, got) == 0.0
    assert int(got[1][0, 1]) == 65535 and int(got[0].max()) == int(a8.max()) * 257
    with pytest.raises(ValueError, match="use --codec png"):
        codecs.encode(rng.integers(0, 65536, (4, 4, 3), dtype=np.uint16), "j2k")
    with pytest.raises(ValueError, match="allowed values are png, j2k"):
        codecs.encode(a8, "webp")
    with pytest.raises(BuildError, match="--codec 'webp'"):
        build_shards(["x.png"], "/nonexistent", name="x", codec="webp")


def test_j2k_sets_hold_the_png_sets_pixels_and_say_their_codec(sets):
    for bits in (8, 16):
        png, j2k = _members(sets[("png", bits)]), _members(sets[("j2k", bits)])
        assert sorted(png) == sorted(j2k) and len(j2k) == N
        man = json.loads((sets[("j2k", bits)] / "manifest.json").read_text())
        assert man["codec"] == "j2k" and json.loads((sets[("png", bits)] / "manifest.json").read_text())["codec"] == "png"
        for key in png:
            assert set(j2k[key]) == {"jp2", "json"} and set(png[key]) == {"png", "json"}
            mp, mj = json.loads(png[key]["json"]), json.loads(j2k[key]["json"])
            assert (mp["codec"], mj["codec"]) == ("png", "j2k") and mj["bits"] == bits
            assert mj["sha256"] == mp["sha256"]  # same pixels: the codec is lossless
            a = codecs.decode(j2k[key]["jp2"])
            assert a.dtype == (np.uint16 if bits == 16 else np.uint8)
            assert np.array_equal(a, codecs.decode(png[key]["png"]))
        assert verify_shards(str(sets[("j2k", bits)])).ok
        stats = inspect_shards(str(sets[("j2k", bits)]))
        assert stats["codec"] == "j2k" and stats["counts"]["codec"] == {"j2k": N}
        assert stats["counts"]["bits"] == {str(bits): N}
        assert f"{N} samples in 3 shards of j2k" in format_stats(stats)


def test_codec_is_part_of_the_build_identity_and_16bit_colour_j2k_is_refused(sets, test_data):
    files = spread(list((test_data / "jsrt" / "images").iterdir()), N)
    out = sets[("png", 8)]
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(BuildError, match="already holds a different build .options differ: codec."):
        _build(files, out, "j2k", 8)  # same options but the codec: another build, not a resume
    assert (out / "manifest.json").read_bytes() == before
    assert json.loads(before)["options"]["codec"] == "png"
    with pytest.raises(BuildError, match="16-bit colour cannot be written as J2K; use --codec png"):
        build_shards(files, "/nonexistent", name="x", codec="j2k", channels=3, bits=16)
    res = subprocess.run([sys.executable, "-m", "dinotrain", "shards", "build", *files[:1], "--out", "/nonexistent",
                          "--name", "x", "--codec", "j2k", "--channels", "3", "--bits", "16"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["dinotrain shards build: error: --codec j2k --channels 3 --bits 16: "
                                                "16-bit colour cannot be written as J2K; use --codec png, or --bits 8"]


def test_j2k_build_is_byte_identical_across_workers_and_verify_catches_a_wrong_codec(sets, test_data, tmp_path):
    files = spread(list((test_data / "jsrt" / "images").iterdir()), N)
    out = tmp_path / "cli"
    res = subprocess.run(
        [sys.executable, "-m", "dinotrain", "shards", "build", *files, "--out", str(out), "--name", "cx16",
         "--size", "112", "--bits", "16", "--modality", "CR", "--samples-per-shard", "3", "--codec", "j2k",
         "--workers", "2", "--no-progress"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert res.returncode == 0, res.stderr
    ref = sets[("j2k", 16)]
    names = sorted(p.name for p in ref.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for n in names:
        assert (out / n).read_bytes() == (ref / n).read_bytes(), n
    # a manifest that claims PNG for J2K samples: every sample is reported, with the codec named
    man = json.loads((out / "manifest.json").read_text())
    man["codec"] = "png"
    (out / "manifest.json").write_text(json.dumps(man))
    rep = verify_shards(str(out))
    assert not rep.ok
    assert sum("has jp2, json, expected png + json (manifest.json says codec png)" in p for p in rep.problems) == N


def test_dali_webdataset_reader_reads_j2k_shards(sets):
    from nvidia.dali import fn, pipeline_def, types

    out = sets[("j2k", 16)]
    tars = sorted(out.glob("*.tar"))

    @pipeline_def(batch_size=N, num_threads=1, device_id=None)
    def pipe():
        img, js = fn.readers.webdataset(paths=[str(p) for p in tars], index_paths=[str(p.with_suffix(".idx")) for p in tars],
                                        ext=["jp2", "json"], missing_component_behavior="error", random_shuffle=False)
        return fn.decoders.image(img, device="cpu", output_type=types.ANY_DATA, dtype=types.UINT16), js

    p = pipe()
    p.build()
    imgs, jss = p.run()
    png = _members(sets[("png", 16)])
    for i in range(N):
        meta = json.loads(bytes(np.asarray(jss.at(i))))
        assert np.array_equal(np.asarray(imgs.at(i))[..., 0], codecs.decode(png[meta["key"]]["png"]))


def _loader_batches(path: Path, n: int) -> list[dict]:
    from dinotrain.config import load_config
    from dinotrain.data import build_train_loader

    cfg = load_config(None, [f"data.sources=[{{name: cxr, path: {path}}}]", "data.global_crops_size=56",
                             "data.local_crops_size=28", "data.batch_size_per_gpu=4", "data.local_crops_number=2",
                             "data.num_threads=1", "data.device=cpu"])
    loader = build_train_loader(cfg)
    try:
        return [next(loader) for _ in range(n)]
    finally:
        loader.close()


@pytest.mark.parametrize("bits", [8, 16])
def test_train_and_eval_loaders_give_the_png_tensors_from_j2k_shards(sets, bits):
    from dinotrain.data import build_eval_loader

    got = _loader_batches(sets[("j2k", bits)], 2)
    want = _loader_batches(sets[("png", bits)], 2)
    for g, w in zip(got, want):
        assert g["keys"] == w["keys"]
        assert torch.equal(g["global_crops"], w["global_crops"]) and torch.equal(g["local_crops"], w["local_crops"])
    png, j2k = _members(sets[("png", bits)]), _members(sets[("j2k", bits)])
    keys = sorted(png)
    ev = {}
    for name, items in (("png", [png[k]["png"] for k in keys]), ("j2k", [j2k[k]["jp2"] for k in keys])):
        ev[name] = torch.cat([b["images"] for b in build_eval_loader(items, resolution=56, batch_size=4,
                                                                      device="cpu")])
    assert ev["j2k"].shape == (N, 3, 56, 56) and torch.equal(ev["j2k"], ev["png"])


def test_shards_build_benchmark_reports_j2k_against_png(test_data):
    from benchmarks.shards_build import codec_rows, measure_codecs, radiographs

    files = radiographs(test_data, 4)
    assert sum("/jsrt/" in f for f in files) == 2 and sum("/covid_cxr/" in f for f in files) == 2
    m = measure_codecs(files, 1, variants=(("8-bit", 112, 8), ("16-bit", 84, 16)))
    assert list(m) == ["8-bit", "16-bit"]
    for v in m.values():
        assert v["png"]["samples"] == v["j2k"]["samples"] == 4 and v["j2k"]["bytes"] > 0
    rows = codec_rows(m)
    assert [r["unit"] for r in rows] == ["s", "cpu s", "MiB"] * 2
    assert rows[5]["ratio"] == pytest.approx(m["16-bit"]["png"]["bytes"] / m["16-bit"]["j2k"]["bytes"])
    assert all(r["ratio"] > 0 and (r["baseline"], r["candidate"]) == ("png", "j2k") for r in rows)
