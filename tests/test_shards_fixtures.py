"""The shared shard fixtures: contents as documented, readable with tarfile, webdataset and DALI."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_cxr_shards_layout(cxr_shards):
    man = _manifest(cxr_shards)
    assert [s["path"] for s in man["shards"]] == [f"jsrt-train-00000{i}.tar" for i in range(3)]
    assert [s["samples"] for s in man["shards"]] == [16, 16, 16]
    assert man["totals"]["inputs"] == 48 and man["totals"]["written"] == 48 and man["totals"]["rejected"] == 0
    assert man["splits"] == {"train": 48}
    for s in man["shards"]:
        assert (cxr_shards / s["index"]).read_text().startswith("v1.2 16\n")
        assert (cxr_shards / s["path"]).stat().st_size == s["bytes"]
    assert (cxr_shards / "rejects.jsonl").read_text() == ""


def test_cxr_shards_read_back_with_tarfile(cxr_shards):
    labels, ages, sexes, contrasts = set(), [], set(), []
    for tar_path in sorted(cxr_shards.glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            names = tf.getnames()
            assert len(names) == 32
            for png_name in names[::2]:
                key = png_name.split(".")[0]
                assert names[names.index(png_name) + 1] == f"{key}.json"
                img = np.asarray(Image.open(io.BytesIO(tf.extractfile(png_name).read())))
                meta = json.loads(tf.extractfile(f"{key}.json").read())
                assert img.dtype == np.uint8 and img.shape == (112, 112) and meta["shape"] == [112, 112]
                assert meta["original_shape"] == [518, 518] and meta["bits"] == 8
                contrasts.append(img.std())
                labels.add(meta["label"])
                ages.append(meta["age"])
                sexes.add(meta["sex"])
                assert meta["dataset"] == "jsrt" and meta["split"] == "train" and meta["modality"] == "CR"
    assert labels == {"nodule", "no_nodule"}
    assert sum(a is not None for a in ages) >= 46 and all(a is None or 10 < a < 95 for a in ages)
    assert sexes == {"M", "F"}
    # radiographs, not blanks (one JSRT film, JPCLN031, is nearly white in the source too)
    assert sum(c > 10 for c in contrasts) >= 46


def test_mixed_shards(mixed_shards):
    assert set(mixed_shards) == {"cxr", "us", "mri"}
    mods = {}
    for name, out in mixed_shards.items():
        man = _manifest(out)
        assert man["totals"]["written"] == 24 and [s["samples"] for s in man["shards"]] == [12, 12]
        mods[name] = list(man["modalities"])
        assert man["shards"][0]["path"] == f"{name}-train-000000.tar"
    assert mods == {"cxr": ["CR"], "us": ["US"], "mri": ["MR"]}
    # the ultrasound subset covers its three labels (spread over the sorted folder)
    with tarfile.open(mixed_shards["us"] / "us-train-000001.tar") as tf:
        labels = {json.loads(tf.extractfile(m).read())["label"] for m in tf.getmembers() if m.name.endswith(".json")}
    assert len(labels) >= 2


def test_cxr16_shards(cxr16_shards):
    man = _manifest(cxr16_shards)
    assert [s["path"] for s in man["shards"]] == ["jsrt16-train-000000.tar", "jsrt16-train-000001.tar"]
    with tarfile.open(cxr16_shards / "jsrt16-train-000000.tar") as tf:
        name = tf.getnames()[0]
        img = np.asarray(Image.open(io.BytesIO(tf.extractfile(name).read())))
    assert img.dtype == np.uint16 and img.shape == (112, 112) and img.max() > 255
