"""Session fixtures that build small real shard sets with `shards build` (owned by the shards area).

`cxr_shards`: 48 JSRT radiographs (both labels) with metadata.csv joined (age, sex, labels),
    size 112, 8-bit, all in split train, 16 samples per shard -> 3 shards `jsrt-train-00000{0,1,2}`.
`mixed_shards`: {"cxr": JSRT, "us": BUSI ultrasound, "mri": brain MRI} -> shard folders of 24
    images each (size 112, 8-bit, train only, 12 per shard -> 2 shards each), for diversity tests.
`cxr16_shards`: 12 JSRT radiographs stored as 16-bit PNG (size 112, 6 per shard -> 2 shards), for
    uint16 decode paths.
Each returns the OUT folder (a pathlib.Path holding the tars, .idx files and manifest.json).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def spread(files: list[Path], n: int) -> list[str]:
    """n files spread evenly over a sorted list (so every label of a sorted folder shows up)."""
    files = sorted(files)
    step = max(1, len(files) // n)
    return [str(p) for p in files[::step][:n]]


def build_small(test_data: Path, folder: str, out: Path, name: str, n: int, per_shard: int, modality: str,
                bits: int = 8) -> Path:
    from shards.build import build_shards

    root = test_data / folder
    build_shards(spread(list((root / "images").iterdir()), n), str(out), name=name, size=112, bits=bits,
                 workers=1, metadata=str(root / "metadata.csv"), modality=modality,
                 samples_per_shard=per_shard, progress=False)
    return out


@pytest.fixture(scope="session")
def cxr_shards(test_data, tmp_path_factory) -> Path:
    """48 JSRT CXRs -> OUT with jsrt-train-000000..000002.tar/.idx, manifest.json, rejects.jsonl."""
    return build_small(test_data, "jsrt", tmp_path_factory.mktemp("cxr_shards"), "jsrt", 48, 16, "CR")


@pytest.fixture(scope="session")
def mixed_shards(test_data, tmp_path_factory) -> dict[str, Path]:
    """Three modalities, 24 images each: {"cxr": OUT, "us": OUT, "mri": OUT}."""
    base = tmp_path_factory.mktemp("mixed_shards")
    return {
        "cxr": build_small(test_data, "jsrt", base / "cxr", "cxr", 24, 12, "CR"),
        "us": build_small(test_data, "busi_ultrasound", base / "us", "us", 24, 12, "US"),
        "mri": build_small(test_data, "brain_mri", base / "mri", "mri", 24, 12, "MR"),
    }


@pytest.fixture(scope="session")
def cxr16_shards(test_data, tmp_path_factory) -> Path:
    """12 JSRT CXRs as 16-bit PNGs -> OUT with jsrt16-train-000000..000001.tar/.idx and manifest.json."""
    return build_small(test_data, "jsrt", tmp_path_factory.mktemp("cxr16_shards"), "jsrt16", 12, 6, "CR", bits=16)
