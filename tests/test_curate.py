"""`dinotrain curate` on real images: planted near-duplicates found (and nothing else), test-set
near-duplicates never selected with --against, the loader trains on a selection with exact resume,
and the pure parts (exact search, water filling, balanced sampling)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dinotrain.cli import main as cli_main
from dinotrain.curate.dedup import near_pairs, view_max_sim
from dinotrain.curate.kmeans import balanced_sample, hierarchical_kmeans, occupancy_entropy, share

VARIANTS = ("exact", "jpeg75", "half", "crop4")


def plant(src: Path, folder: Path) -> dict[str, str]:
    """Four copies of `src` in `folder` (exact bytes, JPEG q75, half size, 4 % cropped per side): name -> original."""
    im = Image.open(src).convert("L")
    w, h = im.size
    shutil.copyfile(src, folder / f"{src.stem}_exact.png")
    im.save(folder / f"{src.stem}_jpeg75.jpg", quality=75)
    im.resize((w // 2, h // 2), Image.BICUBIC).save(folder / f"{src.stem}_half.png")
    dx, dy = int(0.04 * w), int(0.04 * h)
    im.crop((dx, dy, w - dx, h - dy)).save(folder / f"{src.stem}_crop4.png")
    return {f"{src.stem}_{v}": src.stem for v in VARIANTS}


@pytest.fixture(scope="module")
def planted(test_data, tmp_path_factory):
    """All 247 JSRT radiographs plus 4 copies each of 6 of them (3 from jsrt_nodule's test split), as shards."""
    from dinotrain.eval.specs import load_spec, load_task
    from shards.build import build_shards

    base = tmp_path_factory.mktemp("planted")
    folder = base / "images"
    folder.mkdir()
    originals = sorted((test_data / "jsrt" / "images").glob("*.png"))
    for p in originals:
        (folder / p.name).symlink_to(p)
    task = load_task(load_spec("jsrt_nodule"), test_data)
    test_stems = sorted({Path(task.images[i]).stem for i in task.indices("test")})
    train_stems = sorted({p.stem for p in originals} - set(test_stems))
    chosen = test_stems[:: max(1, len(test_stems) // 3)][:3] + train_stems[::80][:3]
    copies: dict[str, str] = {}
    for stem in chosen:
        copies.update(plant(test_data / "jsrt" / "images" / f"{stem}.png", folder))
    build_shards([str(folder)], str(base / "shards"), name="planted", size=256, workers=1, samples_per_shard=100,
                 progress=False)
    return {"shards": base / "shards", "copies": copies, "test_stems": set(test_stems), "chosen": chosen}


def groups_by_stem(out: Path) -> set[frozenset[str]]:
    lines = (out / "groups.jsonl").read_text().splitlines()
    return {frozenset(Path(m["source"]).stem for m in json.loads(line)["members"]) for line in lines}


def test_planted_copies_are_all_found_and_nothing_else(planted, tmp_path, capsys):
    out = tmp_path / "cur"
    assert cli_main(["curate", str(planted["shards"]), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    expected = {frozenset([orig, *(c for c, o in planted["copies"].items() if o == orig)])
                for orig in planted["chosen"]}
    assert groups_by_stem(out) == expected  # every copy with its original, no other image in any group
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 247 + 4 * 6 and report["kept"] == 247
    assert report["dropped"] == {"duplicate": 24} and report["threshold"] == 0.98
    sheet = Image.open(out / "duplicates.png")
    assert sheet.size[1] > 6 * 96  # one row per group
    # resumable: a second run embeds nothing again (every shard's file is in the cache)
    capsys.readouterr()
    assert cli_main(["curate", str(planted["shards"]), "--out", str(tmp_path / "again"),
                     "--cache", str(tmp_path / "cache")]) == 0
    assert "embedded" not in capsys.readouterr().err
    assert (tmp_path / "again" / "selection.json").read_bytes() != b""
    assert groups_by_stem(tmp_path / "again") == expected


def test_against_a_test_split_never_selects_its_near_duplicates(planted, tmp_path, test_data):
    out = tmp_path / "cur"
    assert cli_main(["curate", str(planted["shards"]), "--out", str(out), "--cache", str(tmp_path / "cache"),
                     "--against", "jsrt_nodule", "--data", str(test_data)]) == 0
    groups = [json.loads(line) for line in (out / "groups.jsonl").read_text().splitlines()]
    sel = json.loads((out / "selection.json").read_text())
    kept = {k for s in sel["sets"] for p in s["shards"].values() for k in p["keep"]}
    drops = {k: r for s in sel["sets"] for p in s["shards"].values() for k, r in p["drop"].items()}
    stem_of = {m["sample"].split(":", 1)[1]: Path(m["source"]).stem for g in groups for m in g["members"]}
    test = planted["test_stems"]
    origin = {key: planted["copies"].get(stem, stem) for key, stem in stem_of.items()}
    assert {o for o in origin.values() if o in test}  # planted copies of test images are in the pool
    for key, orig in origin.items():
        if orig in test:  # the test image itself and each of its copies: never kept, removed as 'against'
            assert key not in kept and drops[key].startswith("against"), (key, drops.get(key))
    for g in groups:  # a group of training images keeps exactly one
        if origin[g["members"][0]["sample"].split(":", 1)[1]] not in test:
            assert sum(m["sample"].split(":", 1)[1] in kept for m in g["members"]) == 1
    report = json.loads((out / "report.json").read_text())
    # every test image of the task that is in the pool (all of them: the pool is all of JSRT) is dropped
    assert report["against"]["jsrt_nodule"] == report["dropped"]["against"] == len(test) + 4 * 3


def test_loader_trains_on_a_selection_with_exact_resume(cxr_shards, mixed_shards, tmp_path):
    from dinotrain.config import load_config
    from dinotrain.data import build_train_loader
    from dinotrain.data.shard_index import DataError

    out = tmp_path / "cur"
    assert cli_main(["curate", str(cxr_shards), "--out", str(out), "--cache", str(tmp_path / "cache"),
                     "--target", "20", "--levels", "8,3", "--strategy", "closest"]) == 0
    sel = json.loads((out / "selection.json").read_text())
    kept = {k for p in sel["sets"][0]["shards"].values() for k in p["keep"]}
    assert len(kept) == 20 and sel["sets"][0]["samples"] == 48
    rep = json.loads((out / "report.json").read_text())
    assert rep["clusters"]["drawn"] == 20 and len(rep["clusters"]["levels"]) == 2
    assert (out / "clusters.png").is_file()
    small = ["data.global_crops_size=56", "data.local_crops_size=28", "data.batch_size_per_gpu=4",
             "data.local_crops_number=2", "data.num_threads=1", "data.device=cpu"]
    srcs = (f"data.sources=[{{name: cxr, path: {cxr_shards}, selection: {out / 'selection.json'}, max_samples: 10}}, "
            f"{{name: us, path: {mixed_shards['us']}}}]")
    cfg = load_config(None, [srcs, *small])
    a = build_train_loader(cfg)
    cxr = {r.key for r in a.stream.sources[0].refs}
    assert len(cxr) == 10 and cxr < kept  # max_samples takes its nested subset inside the selection
    first = [next(a) for _ in range(2)]
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(a) for _ in range(3)]
    b = build_train_loader(cfg)
    b.load_state_dict(state)
    got = [next(b) for _ in range(3)]
    for e, g in zip(expected, got):
        assert e["keys"] == g["keys"] and torch.equal(e["global_crops"], g["global_crops"])
    drawn_cxr = {k for bt in first + expected for k, d in zip(bt["keys"], bt["dataset"]) if d == "jsrt"}
    assert drawn_cxr and drawn_cxr <= cxr
    # a selection made for another shard set is refused, naming both
    wrong = load_config(None, [f"data.sources=[{{name: us, path: {mixed_shards['us']}, "
                               f"selection: {out / 'selection.json'}}}]", *small])
    with pytest.raises(DataError, match="was not made for the shards at .*rerun `dinotrain curate`"):
        build_train_loader(wrong)


def test_model_encoder_without_threshold_is_one_line(cxr_shards, tmp_path, capsys):
    rc = cli_main(["curate", str(cxr_shards), "--out", str(tmp_path), "--encoder", "random:vit_tiny",
                   "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "give --threshold" in err


@pytest.mark.parametrize("block_bytes", [256 << 20, 7 * 300 * 9 * 4])  # one block, and blocks of 7 rows
def test_exact_search_matches_brute_force(block_bytes, monkeypatch):
    monkeypatch.setattr("dinotrain.curate.dedup.BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 3, 16)).astype(np.float32)
    v[50] = v[7] + 0.01 * rng.normal(size=(3, 16))
    v[200, 2] = v[9, 0]  # a match through one view pair only
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    full = np.einsum("avd,bwd->abvw", v, v).max(axis=(2, 3))
    i, j = np.triu_indices(300, 1)
    want = {(a, b) for a, b in zip(i, j) if full[a, b] >= 0.9}
    got_i, got_j, got_s = near_pairs(v, 0.9, backend="torch")
    assert set(zip(got_i.tolist(), got_j.tolist())) == want and {(7, 50), (9, 200)} <= want
    np.testing.assert_allclose(got_s, full[got_i, got_j], rtol=1e-5)
    np.testing.assert_allclose(view_max_sim(v[:5], v), full[:5], rtol=1e-5, atol=1e-6)
    ref = v[::10] + 0.001 * rng.normal(size=v[::10].shape).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    ai, aj, _ = near_pairs(v, 0.95, ref, backend="torch")
    cross = np.einsum("avd,bwd->abvw", v, ref).max(axis=(2, 3))
    assert set(zip(ai.tolist(), aj.tolist())) == set(zip(*np.nonzero(cross >= 0.95)))
    assert {(10 * k, k) for k in range(30)} <= set(zip(ai.tolist(), aj.tolist()))


def test_faiss_and_torch_searches_give_the_same_pairs():
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    rng = np.random.default_rng(2)
    v = rng.normal(size=(400, 3, 32)).astype(np.float32)
    v[100:140] = v[:40] + 0.05 * rng.normal(size=(40, 3, 32)).astype(np.float32)
    v[300, 1] = v[5, 2]
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    ref = v[::7].copy()
    for b in (None, ref):
        t = near_pairs(v, 0.9, b, backend="torch")
        f = near_pairs(v, 0.9, b, backend="faiss")
        order_t, order_f = np.lexsort((t[1], t[0])), np.lexsort((f[1], f[0]))
        assert len(t[0]) > 40
        np.testing.assert_array_equal(t[0][order_t], f[0][order_f])
        np.testing.assert_array_equal(t[1][order_t], f[1][order_f])
        np.testing.assert_allclose(t[2][order_t], f[2][order_f], atol=1e-5)


def test_water_filling_and_balanced_sampling():
    assert share([2, 50, 50], 30, np.array([0, 1, 2])) == [2, 14, 14]
    assert share([2, 50, 50], 31, np.array([2, 1, 0])) == [2, 14, 15]
    assert share([3, 4], 100, np.array([0, 1])) == [3, 4]
    rng = np.random.default_rng(1)
    dense = rng.normal(0, 0.05, (900, 8))
    rare = np.concatenate([rng.normal(3 * (k + 1), 0.05, (10, 8)) for k in range(10)])
    x = np.concatenate([dense, rare]).astype(np.float32)
    h = hierarchical_kmeans(x, [40, 11], seed=0)
    for strategy in ("random", "closest"):
        sel = balanced_sample(x, h, 200, strategy, seed=0)
        assert len(sel) == 200 and len(set(sel.tolist())) == 200
        assert (sel >= 900).sum() == 100  # every rare sample kept; the dense blob gave up the rest
    top = h.sample_clusters(1)
    assert occupancy_entropy(top[sel], 11) > occupancy_entropy(top, 11) + 0.3
    assert np.array_equal(balanced_sample(x, h, 200, "random", seed=0), balanced_sample(x, h, 200, "random", seed=0))


def test_pixel_views_ignore_border_text():
    from dinotrain.curate.embed import pixel_views

    rng = np.random.default_rng(0)
    a = (rng.random((200, 200)) * 255).astype(np.uint8)
    b = a.copy()
    b[:15, :] = 255  # a burned-in label along the top edge, outside the central 80 %
    va, vb = pixel_views(Image.fromarray(a)), pixel_views(Image.fromarray(b))
    assert float(view_max_sim(va[None], vb[None])[0, 0]) > 0.999
    buf = io.BytesIO()
    Image.fromarray(np.full((50, 50), 7, np.uint8)).save(buf, "PNG")
    assert not pixel_views(Image.open(buf)).any()  # a flat image is the zero vector: similar to nothing


def test_a_changed_selection_refuses_to_resume_and_an_old_config_still_resumes(tmp_path):
    from dinotrain.config import load_config
    from dinotrain.errors import UserError
    from dinotrain.train.run_dir import check_resumable
    from tests.test_run_errors import saved_run

    src = "data.sources=[{{name: cxr, path: /s{}}}]"
    saved_run(tmp_path, src.format(", selection: /a.json"))
    check_resumable(load_config(None, [f"output_dir={tmp_path}", src.format(", selection: /a.json")]), world_size=1)
    with pytest.raises(UserError, match=r"data.sources=\[cxr selection=/a.json\] \(now \[cxr selection=/b.json\]\)"):
        check_resumable(load_config(None, [f"output_dir={tmp_path}", src.format(", selection: /b.json")]),
                        world_size=1)
    old = tmp_path / "old"
    saved_run(old, src.format(""))  # a run from before selections: its sources have no selection key
    cfg = old / "config.yaml"
    data = yaml.safe_load(cfg.read_text())
    assert data["data"]["sources"][0].pop("selection", "absent") is None
    cfg.write_text(yaml.safe_dump(data))
    check_resumable(load_config(None, [f"output_dir={old}", src.format("")]), world_size=1)


def test_against_a_shard_set_drops_exactly_the_shared_images(cxr_shards, mixed_shards, tmp_path):
    out = tmp_path / "cur"
    other = mixed_shards["cxr"]  # 24 of the 48 JSRT images of cxr_shards, built into another shard set
    assert cli_main(["curate", str(cxr_shards), "--out", str(out), "--cache", str(tmp_path / "cache"),
                     "--against", str(other)]) == 0
    sel = json.loads((out / "selection.json").read_text())
    drops = {k: r for p in sel["sets"][0]["shards"].values() for k, r in p["drop"].items()}
    from dinotrain.curate.embed import read_shard, shards_of

    def sources(root):
        return {k: s for sh in shards_of(str(root))[1] for k, s in zip(*read_shard(sh)[:2])}

    mine, theirs = sources(cxr_shards), set(sources(other).values())
    shared = {k for k, s in mine.items() if s in theirs}
    assert len(shared) == 24 and set(drops) == shared
    assert all(r.startswith("against: near-duplicate of cxr:") for r in drops.values())


def test_sweep_curated_arm_against_random_at_equal_size(cxr_shards, tmp_path):
    from dinotrain.data import build_train_loader
    from launch.sweeps import sweep

    out = tmp_path / "cur"
    assert cli_main(["curate", str(cxr_shards), "--out", str(out), "--cache", str(tmp_path / "cache"),
                     "--target", "20", "--levels", "8,3"]) == 0
    repo = Path(__file__).resolve().parents[1]
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(f"""
name: t
base: {repo}/configs/pretrain/tiny_cpu.yaml
output_dir: {tmp_path}/out
sources: {{pool: {cxr_shards}, pool_curated: {{path: {cxr_shards}, selection: {out / 'selection.json'}}}}}
diversity: {{random: [pool], curated: [pool_curated]}}
sizes: [10, 20]
""")
    spec = sweep.load_sweep(spec_file)
    runs = {r.name: r for r in sweep.expand(spec)}
    assert set(runs) == {"random-n10", "random-n20", "curated-n10", "curated-n20"}
    assert runs["random-n20"].n_images == runs["curated-n20"].n_images == 20  # equal n, one drawn at random
    kept = {k for p in json.loads((out / "selection.json").read_text())["sets"][0]["shards"].values()
            for k in p["keep"]}
    for name, want in (("curated-n20", kept), ("curated-n10", None), ("random-n20", None)):
        cfg = sweep.run_config(spec, runs[name])
        assert (cfg.data.sources[0].selection is not None) == name.startswith("curated")
        keys = {r.key for r in build_train_loader(cfg).stream.sources[0].refs}
        assert len(keys) == int(name.rsplit("n", 1)[1])
        if want is not None:
            assert keys == want  # the curated arm at its target size trains on exactly the selection
        elif name.startswith("curated"):
            assert keys < kept


def _submit_parts(cluster: str, folder: Path, opts_list: list) -> list[list[str]]:
    import submitit

    from dinotrain.curate.run import embed_part

    if cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=folder)
        ex.update_parameters(time=10, cpus_per_task=1, ntasks_per_node=1, nodes=1, array_parallelism=2)
    else:
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(timeout_min=10)
    jobs = ex.map_array(embed_part, opts_list)
    return [j.result() for j in jobs]


@pytest.mark.parametrize("cluster", ["local", pytest.param("slurm", marks=[pytest.mark.slurm, pytest.mark.slow])])
def test_embedding_split_over_two_tasks_then_one_curate_embeds_nothing(cluster, request, cxr_shards, mixed_shards,
                                                                        tmp_path, capsys):
    from dinotrain.curate.embed import PixelEncoder, cache_file, shards_of
    from dinotrain.curate.run import CurateOptions

    if cluster == "slurm":
        request.getfixturevalue("slurm_cluster")
    roots = [str(cxr_shards), str(mixed_shards["us"])]  # 3 + 2 shards, counted over both sets
    cache = tmp_path / "cache"
    opts = [CurateOptions(roots, "", cache=str(cache), part=(i, 2), embed_only=True) for i in range(2)]
    written = _submit_parts(cluster, tmp_path / "jobs", opts)
    every = [cache_file(str(cache), PixelEncoder.id, s) for r in roots for s in shards_of(r)[1]]
    assert sorted(written[0] + written[1]) == sorted(every) and len(written[0]) == 3 and len(written[1]) == 2
    capsys.readouterr()
    assert cli_main(["curate", *roots, "--out", str(tmp_path / "out"), "--cache", str(cache)]) == 0
    assert "embedded" not in capsys.readouterr().err
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["samples"] == 48 + 24


def test_a_killed_embedding_resumes_at_the_missing_shards(cxr_shards, tmp_path, capsys):
    from dinotrain.curate.embed import PixelEncoder, cache_file, shards_of
    from dinotrain.curate.run import CurateOptions, embed_part

    cache = tmp_path / "cache"
    first = embed_part(CurateOptions([str(cxr_shards)], "", cache=str(cache), part=(0, 3)), log=lambda m: None)
    files = [cache_file(str(cache), PixelEncoder.id, s) for s in shards_of(str(cxr_shards))[1]]
    assert first == files[:1]
    Path(files[0]).write_bytes(Path(files[0]).read_bytes()[:100])  # cut short, as by a kill mid-write
    capsys.readouterr()
    assert cli_main(["curate", str(cxr_shards), "--out", str(tmp_path / "out"), "--cache", str(cache)]) == 0
    err = capsys.readouterr().err
    assert err.count("embedded") == 3  # the cut file and the two never written
    assert all(np.load(f)["vectors"].shape[1:] == (3, 256) for f in files)


def test_a_model_encoder_embeds_with_the_eval_extraction(cxr_shards, tmp_path):
    from dinotrain.eval.loading import load_model

    out = tmp_path / "out"
    assert cli_main(["curate", str(cxr_shards), "--out", str(out), "--cache", str(tmp_path / "cache"),
                     "--encoder", "random:vit_tiny", "--resolution", "56", "--threshold", "0.999999"]) == 0
    rep = json.loads((out / "report.json").read_text())
    fingerprint = load_model("random:vit_tiny").fingerprint
    assert rep["encoder"] == f"{fingerprint}-r56" and rep["samples"] == 48
    files = sorted((tmp_path / "cache" / "embeddings" / rep["encoder"]).glob("*.npz"))
    v = np.concatenate([np.load(f)["vectors"] for f in files])
    assert v.shape == (48, 1, 192) and np.allclose(np.linalg.norm(v, axis=-1), 1, atol=1e-5)


def test_lloyd_in_torch_and_in_faiss_agree_from_the_same_kmeanspp_init():
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    from dinotrain.curate.kmeans import _lloyd_torch, kmeans, kmeans_pp

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(5 * k, 0.5, (60 + 10 * k, 8)) for k in range(6)]).astype(np.float32)
    c_t, a_t = _lloyd_torch(x, kmeans_pp(x, 6, seed=1), 20)
    c_f, a_f = kmeans(x, 6, iters=20, seed=1)
    pairs = set(zip(a_t.tolist(), a_f.tolist()))
    assert len(pairs) == 6 == len(set(a_t.tolist()))  # the same partition, labels matched one to one
    for lt, lf in pairs:
        np.testing.assert_allclose(c_t[lt], c_f[lf], atol=1e-4)
