"""The DALI training loader over real shards: batch contract, exact resume, ranks, mixtures, errors."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dinotrain.config import load_config
from dinotrain.data import build_train_loader
from dinotrain.data.mixture import MixtureStream
from dinotrain.data.shard_index import DataError

B = 4
SMALL = ["data.global_crops_size=56", "data.local_crops_size=28", f"data.batch_size_per_gpu={B}",
         "data.local_crops_number=2", "data.num_threads=1", "data.device=cpu"]


def cfg_for(sources: list[dict], *extra: str):
    src = ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in s.items()) + "}" for s in sources)
    return load_config(None, [f"data.sources=[{src}]", *SMALL, *extra])


def take(loader, n):
    return [next(loader) for _ in range(n)]


def manifest_keys(folder: Path) -> set[str]:
    from dinotrain.data.shard_index import index_source

    return {r.key for r in index_source(str(folder), "train")}


def test_batch_contract(cxr_shards):
    cfg = cfg_for([{"name": "cxr", "path": cxr_shards}])
    loader = build_train_loader(cfg)
    b = next(loader)
    assert b["global_crops"].shape == (2 * B, 3, 56, 56) and b["global_crops"].dtype == torch.float32
    assert b["local_crops"].shape == (2 * B, 3, 28, 28)
    assert b["masks"].shape == (2 * B, 16) and b["masks"].dtype == torch.bool
    assert int(b["n_masked_patches"]) == int(b["masks"].sum()) == b["mask_indices_list"].numel()
    assert b["masks_weight"].shape == b["mask_indices_list"].shape
    assert b["upperbound"] >= int(b["n_masked_patches"])
    assert (b["masks"].sum(1) > 0).sum() == B  # mask_sample_probability 0.5 of the 2B global crops
    assert len(b["keys"]) == len(b["dataset"]) == len(b["modality"]) == B
    assert set(b["keys"]) <= manifest_keys(Path(cxr_shards))
    # dataset and modality come from each sample's json
    from dinotrain.data.shard_index import ShardReader

    refs = {r.key: r for r in loader.stream.sources[0].refs}
    reader = ShardReader()
    for key, ds, mod in zip(b["keys"], b["dataset"], b["modality"]):
        r = refs[key]
        meta = json.loads(reader.read(r.shard, r.meta_offset, r.meta_size))
        assert (ds, mod) == (meta["dataset"], meta["modality"])
    g = b["global_crops"]
    assert torch.isfinite(g).all()
    # grayscale repeated to 3 channels, normalised with RAD-DINO's mean/std: [0, 1] -> [-2.05, 1.82]
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 0], g[:, 2])
    assert g.min() >= (0 - 0.5307) / 0.2583 - 1e-4 and g.max() <= (1 - 0.5307) / 0.2583 + 1e-4
    assert g.std() > 0.3  # real image content, not a constant


def test_crops_are_crop_major(cxr_shards):
    # no randomness left: every global crop is the whole (square) image, so crop 0 == crop 1 per sample
    cfg = cfg_for([{"name": "cxr", "path": cxr_shards}], "data.global_crops_scale=[1.0,1.0]", "data.flip_p=0",
                  "data.intensity_p=0", "data.blur_p_global1=0", "data.blur_p_global2=0",
                  "data.solarize_p_global2=0", "data.global_crops_number=2", "data.channels=1")
    g = next(build_train_loader(cfg))["global_crops"]
    assert g.shape == (2 * B, 1, 56, 56)  # data.channels=1: no repeat
    first, second = g[:B], g[B:]
    same = [torch.allclose(first[i], second[i], atol=1e-5) for i in range(B)]
    assert sum(same) >= B - 1  # a non-square image falls back to a centre crop per draw: still equal
    assert not torch.allclose(first[0], first[1])


def test_resume_gives_the_same_next_batches(cxr_shards):
    cfg = cfg_for([{"name": "cxr", "path": cxr_shards}])
    a = build_train_loader(cfg)
    take(a, 2)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint stores must be plain data
    expected = take(a, 2)
    b = build_train_loader(cfg)
    b.load_state_dict(state)
    got = take(b, 2)
    for e, g in zip(expected, got):
        assert e["keys"] == g["keys"]
        assert torch.equal(e["global_crops"], g["global_crops"])
        assert torch.equal(e["local_crops"], g["local_crops"])
        assert torch.equal(e["masks"], g["masks"])
    # a fresh loader without the state starts elsewhere
    assert next(build_train_loader(cfg))["keys"] != expected[0]["keys"]
    wrong = cfg_for([{"name": "cxr", "path": cxr_shards}], "data.batch_size_per_gpu=2")
    with pytest.raises(ValueError, match="same data config"):
        build_train_loader(wrong).load_state_dict(state)


def test_two_ranks_read_disjoint_halves_of_an_epoch(cxr_shards):
    n = 16
    cfg = cfg_for([{"name": "cxr", "path": cxr_shards, "max_samples": n}], "data.num_threads=2")
    ranks = [build_train_loader(cfg, rank=r, world_size=2) for r in range(2)]
    n_shards = len(json.loads((Path(cxr_shards) / "manifest.json").read_text())["shards"])
    assert n_shards < 2 * 2  # fewer shards than ranks x reader threads: the split is by sample, not by shard
    seen = [sum((bt["keys"] for bt in take(loader, n // (2 * B))), []) for loader in ranks]
    assert not set(seen[0]) & set(seen[1])
    subset = {r.key for r in ranks[0].stream.sources[0].refs}
    assert set(seen[0]) | set(seen[1]) == subset and len(subset) == n
    st = ranks[0].stats()["sources"][0]
    assert st["samples_used"] == n and st["epochs_seen"] == 1.0


def test_mixture_of_modalities_with_nested_subsets(mixed_shards):
    srcs = [{"name": name, "path": path, "weight": w, "max_samples": 0.5}
            for (name, path), w in zip(sorted(mixed_shards.items()), (1.0, 1.0, 2.0))]
    loader = build_train_loader(cfg_for(srcs))
    batches = take(loader, 3)
    mods = {m for bt in batches for m in bt["modality"]}
    assert len(mods) >= 2
    stats = loader.stats()
    assert stats["step"] == 3 and sum(s["samples_drawn"] for s in stats["sources"]) == 3 * B
    for s in stats["sources"]:
        assert s["samples_used"] == max(1, round(0.5 * s["samples_total"]))
        assert s["epochs_seen"] == pytest.approx(s["samples_drawn"] / s["samples_used"])
    # the half subset sits inside the full set, and the full set is every sample of the shards
    full = build_train_loader(cfg_for([{**s, "max_samples": "null"} for s in srcs]))
    for half, whole in zip(loader.stream.sources, full.stream.sources):
        assert {r.key for r in half.refs} < {r.key for r in whole.refs} == manifest_keys(Path(whole.path))


def _high_freq(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())


def test_blur_and_solarise_are_applied_as_configured(cxr_shards):
    # the draws do not depend on the probabilities' values, so two configs differ only in the flags
    base = ["data.global_crops_number=2", "data.blur_p_global2=0", "data.local_crops_number=1"]
    src = [{"name": "cxr", "path": cxr_shards}]
    plain = next(build_train_loader(cfg_for(src, *base, "data.blur_p_global1=0", "data.solarize_p_global2=0")))
    fx = next(build_train_loader(cfg_for(src, *base, "data.blur_p_global1=1", "data.solarize_p_global2=1")))
    assert plain["keys"] == fx["keys"]
    g0, g0_fx = plain["global_crops"][:B], fx["global_crops"][:B]
    assert _high_freq(g0_fx) < 0.8 * _high_freq(g0)  # crop 1 blurred
    m, s = 0.5307, 0.2583
    x = plain["global_crops"][B:] * s + m
    solarised = torch.where(x >= 0.5, 1 - x, x)
    assert torch.allclose(fx["global_crops"][B:] * s + m, solarised, atol=1e-4)  # crop 2 solarised
    assert torch.equal(plain["local_crops"], fx["local_crops"])


def test_corrupt_sample_is_skipped_and_a_missing_shard_is_named(cxr_shards, tmp_path):
    shards = tmp_path / "cxr"
    shutil.copytree(cxr_shards, shards)
    cfg = cfg_for([{"name": "cxr", "path": shards}])
    loader = build_train_loader(cfg)
    probe = MixtureStream(loader.stream.sources, B, 1, loader.seed)
    victim = probe.next_for_rank(0)[1][1]
    with open(victim.shard, "r+b") as f:  # flip bytes in the middle of the PNG data
        f.seek(victim.image_offset + victim.image_size // 2)
        chunk = f.read(16)
        f.seek(victim.image_offset + victim.image_size // 2)
        f.write(bytes(255 - c for c in chunk))
    with pytest.warns(RuntimeWarning, match=f"sample '{victim.key}' is corrupt"):
        b = next(loader)
    assert victim.key not in b["keys"] and len(b["keys"]) == B
    assert b["global_crops"].shape[0] == 2 * B
    assert loader.stats()["skipped_corrupt"] == 1

    first = probe.next_for_rank(0)[0][1]  # first sample of the following batch
    Path(first.shard).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=f"shard .*{Path(first.shard).name}"):
            fresh = build_train_loader(cfg)  # the index (.idx) is still there, the tar is not
            fresh.load_state_dict(loader.state_dict())
            next(fresh)


def test_missing_manifest_names_the_folder_and_fix(tmp_path):
    with pytest.raises(DataError, match="manifest.json.*shards build"):
        build_train_loader(cfg_for([{"name": "x", "path": tmp_path}]))


def test_dali_output_matches_numpy_for_an_identity_crop(cxr_shards):
    # whole image, no jitter: the crop is the image resized, so compare with PIL's bicubic resize
    from PIL import Image

    from dinotrain.data.shard_index import ShardReader

    cfg = cfg_for([{"name": "cxr", "path": cxr_shards}], "data.global_crops_scale=[1.0,1.0]", "data.flip_p=0",
                  "data.intensity_p=0", "data.blur_p_global1=0", "data.blur_p_global2=0",
                  "data.solarize_p_global2=0", "data.local_crops_number=0")
    loader = build_train_loader(cfg)
    b = next(loader)
    ref = next(r for r in loader.stream.sources[0].refs if r.key == b["keys"][0])
    import io

    im = Image.open(io.BytesIO(ShardReader().read(ref.shard, ref.image_offset, ref.image_size)))
    arr = np.asarray(im).astype(np.float64)
    arr = arr / (65535.0 if arr.max() > 255 else 255.0)
    if arr.ndim == 3:
        pytest.skip("first sample is RGB")
    if arr.shape[0] != arr.shape[1]:
        pytest.skip("first sample is not square")
    want = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize((56, 56), Image.BICUBIC))
    got = (b["global_crops"][0, 0].numpy() * 0.2583 + 0.5307)
    assert np.abs(got - np.clip(want, 0, 1)).mean() < 0.02


def test_data_preview_writes_grid_and_batch_json(cxr_shards, tmp_path):
    from PIL import Image

    from dinotrain.cli import main

    out = tmp_path / "preview"
    rc = main(["data", "preview", f"data.sources=[{{name: cxr, path: {cxr_shards}}}]", *SMALL,
               "--out", str(out), "--batches", "2"])
    assert rc == 0
    report = json.loads((out / "batch.json").read_text())
    assert len(report["batches"]) == 2
    b0 = report["batches"][0]
    assert b0["global_crops"]["shape"] == [2 * B, 3, 56, 56] and b0["global_crops"]["dtype"] == "float32"
    assert b0["local_crops"]["shape"] == [2 * B, 3, 28, 28]
    assert b0["global_crops"]["min"] < b0["global_crops"]["max"]
    assert len(b0["masks"]["ratio_per_crop"]) == 2 * B and max(b0["masks"]["ratio_per_crop"]) > 0
    # global crop 1 is never blurred by default (dinov2's code: p = 0.0)
    assert len(b0["keys"]) == B and not any(row[0] for row in b0["augment"]["blur_applied"])
    assert report["dataset"]["sources"][0]["samples_drawn"] == 2 * B
    grid = Image.open(out / "crops.png")
    from dinotrain.data.cli import GAP, LINE

    # one row per sample (2 batches x B): a title line, 56 px crops with two caption lines, a gap
    row = LINE + 4 + 56 + 2 * LINE + GAP
    assert grid.size[1] == 2 * B * row
    px = np.asarray(grid.convert("RGB")).astype(int)
    assert ((px[..., 0] - px[..., 1]) > 60).any()  # masked patches tinted red on grayscale crops
    caption = px[LINE + 4 + 56: LINE + 4 + 56 + 2 * LINE, :56]
    assert (caption.min(-1) > 150).sum() > 20  # light text under the first crop, on the dark background
    assert main(["data", "preview", "--out", str(tmp_path / "x")]) == 2  # no sources: a clear config error


@pytest.mark.s3
def test_loader_reads_shards_from_s3(cxr_shards, s3_env):
    fs = s3_env.filesystem()
    prefix = f"{s3_env.bucket}/loader-test/cxr"
    for f in Path(cxr_shards).iterdir():
        if f.is_file():
            fs.put(str(f), f"{prefix}/{f.name}")
    local = build_train_loader(cfg_for([{"name": "cxr", "path": cxr_shards}]))
    remote = build_train_loader(cfg_for([{"name": "cxr", "path": f"s3://{prefix}"}]))
    a, b = next(local), next(remote)
    assert a["keys"] == b["keys"]
    assert torch.equal(a["global_crops"], b["global_crops"])  # same bytes, same crops
    remote.close()
