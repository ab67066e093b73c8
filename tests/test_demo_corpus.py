"""The demo's synthetic corpus: deterministic, labelled synthetic, and its latents show in the pixels."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from launch.demo.synthetic import (
    COLUMNS,
    DICOM_FILES,
    MODALITIES,
    _rng,
    make_corpus,
    render_us_breast,
    render_xr_chest,
)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(info):
    with info.metadata.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n=24, seed=3, size=64)


def test_same_seed_same_bytes_other_seed_other_images(corpus, tmp_path):
    again = make_corpus(tmp_path / "again", n=24, seed=3, size=64)
    assert _digest(corpus.root) == _digest(again.root)
    other = make_corpus(tmp_path / "other", n=24, seed=4, size=64, dicom=False)
    a, b = _digest(corpus.root), _digest(other.root)
    pngs = [k for k in b if k.endswith(".png")]
    assert len(pngs) == 24
    assert all(a[k] != b[k] for k in pngs)


def test_smaller_corpus_is_a_prefix(corpus, tmp_path):
    small = make_corpus(tmp_path / "small", n=9, seed=3, size=64, dicom=False)
    big, little = _digest(corpus.root), _digest(small.root)
    pngs = [k for k in little if k.endswith(".png")]
    assert len(pngs) == 9
    assert all(little[k] == big[k] for k in pngs)


def test_metadata_layout_and_labels(corpus):
    rows = _rows(corpus)
    assert list(rows[0]) == list(COLUMNS)
    assert corpus.n_synthetic == 24 and corpus.counts == {"xr_chest": 8, "us_breast": 8, "ct_chest": 8, "dicom": 8}
    assert len(rows) == 24 + len(DICOM_FILES)
    for r in rows:
        assert (corpus.root / r["path"]).is_file(), r["path"]
    synth = [r for r in rows if r["modality"] in MODALITIES]
    assert all(r["source"] == "synthetic" for r in synth)
    assert {r["split"] for r in synth} <= {"train", "val", "test"}
    assert all(18 <= int(r["age"]) <= 90 and r["sex"] in ("F", "M") for r in synth)
    assert "SYNTHETIC" in (corpus.root / "README.txt").read_text()
    # the exact key set the shard builder joins on: paths are unique
    assert len({r["path"] for r in rows}) == len(rows)


def test_bit_depths(corpus):
    for r in _rows(corpus):
        if r["modality"] not in MODALITIES:
            continue
        im = Image.open(corpus.root / r["path"])
        a = np.asarray(im)
        if r["modality"] == "us_breast":
            assert im.mode == "L" and a.dtype == np.uint8
        else:
            assert im.mode.startswith("I;16") and a.dtype == np.uint16
            assert a.max() > 255  # really uses more than 8 bits
        assert a.shape == (64, 64) and a.std() > 0


def test_dicoms_decode_or_fail_as_declared(corpus):
    for name, decodes in DICOM_FILES:
        path = corpus.root / "dicom" / name
        ok = True
        try:
            _ = pydicom.dcmread(path).pixel_array
        except Exception:
            ok = False
        assert ok == decodes, name
    assert corpus.n_dicom_broken == sum(not d for _, d in DICOM_FILES)


def _bone_contrast(img: np.ndarray) -> float:
    """High-pass energy inside the thorax: ribs, spine and clavicles against soft tissue."""
    from scipy.ndimage import gaussian_filter

    a = img.astype(float)
    hp = a - gaussian_filter(a, 3)
    h, w = a.shape
    return float(np.abs(hp[h // 5: 4 * h // 5, w // 5: 4 * w // 5]).mean())


def test_age_shows_as_bone_density_and_sex_as_silhouette():
    size, n = 96, 40
    ages = np.linspace(20, 90, n)
    contrast, widths = [], {"F": [], "M": []}
    from launch.demo.synthetic import bone_density

    for i, age in enumerate(ages):
        rng = _rng(11, "xr_chest", i)
        dens = bone_density(age, rng)
        sex = "F" if i % 2 else "M"
        img = render_xr_chest(rng, size, age, sex, dens, nodule=False)
        contrast.append(_bone_contrast(img))
        row = img[int(size * 0.2)].astype(float)  # shoulder level
        widths[sex].append(float((row > 0.15 * img.max()).mean()))
    from scipy.stats import spearmanr

    rho = spearmanr(ages, contrast)[0]
    assert rho < -0.6, f"bone contrast should fall with age, Spearman rho={rho:.2f}"
    m, f = np.array(widths["M"]), np.array(widths["F"])
    assert m.mean() - f.mean() > 0.08, widths  # broader shoulders
    threshold = (m.mean() + f.mean()) / 2
    accuracy = ((m > threshold).sum() + (f <= threshold).sum()) / n
    assert accuracy >= 0.85, f"one-row width separates sex with accuracy {accuracy:.2f}"


def test_ultrasound_lesions_are_hypoechoic():
    size = 96
    means = {}
    for label in ("normal", "benign", "malignant"):
        vals = [render_us_breast(_rng(5, "us_breast", i), size, label).astype(float) for i in range(6)]
        # mid-depth band where the masses are drawn
        means[label] = np.mean([v[size // 3: 2 * size // 3, size // 3: 2 * size // 3].mean() for v in vals])
    assert means["benign"] < means["normal"] and means["malignant"] < means["normal"], means


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n=2"):
        make_corpus(tmp_path, n=2)
    with pytest.raises(ValueError, match="size=8"):
        make_corpus(tmp_path, n=6, size=8)
