"""The demo's embedded corpus: procedurally generated, clearly SYNTHETIC, images with latent attributes.

Three "modalities" are drawn from per-image random generators, so image i is the same whatever
the corpus size (a corpus of 100 is a prefix of one of 200) and the whole corpus is a pure
function of the seed:

- `xr_chest`   radiograph-like chests, 16-bit PNG (a 12-bit detector signal scaled to the
               full 16-bit range, as DICOM-to-PNG exports do). Bone
               density (ribs, spine, clavicles) falls with the latent *age*; the silhouette
               (shoulder width, thorax shape, breast shadows) follows the latent *sex*;
               label = a small dense nodule in a lung, or not.
- `us_breast`  ultrasound-like sector fans with multiplicative Rayleigh speckle, 8-bit PNG;
               label = normal, benign (smooth oval hypoechoic mass) or malignant (irregular mass
               with posterior shadowing).
- `ct_chest`   CT-like axial slices stored as (HU + 1024) x 16 in 16-bit PNG (HU -1024..3071
               over the full range, which the shard builder and the eval read as [0, 1]); vertebra and rib
               density follow age, the body outline follows sex; label = lung nodule or not.

A few real DICOM files that ship inside pydicom are copied beside them (`dicom/`): some
decode, some do not (truncated pixel data, no pixel data, no file meta), to show DICOM
ingestion and rejects in `shards build`.

Nothing here comes from a patient: every synthetic row of metadata.csv says `source=synthetic`.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom

MODALITIES = ("xr_chest", "us_breast", "ct_chest")
US_LABELS = ("normal", "benign", "malignant")

# Columns follow the shared eval-data convention (path relative to the corpus root, age, sex,
# label, split ...) plus the synthetic latents, so the same task specs read both.
COLUMNS = (
    "path", "label", "labels_all", "age", "sex", "view", "modality", "split", "patient_id",
    "bone_density", "source", "source_path", "license",
)

# pydicom's own test files: (name, decodes?) -- checked against pydicom 3.0 with pylibjpeg.
DICOM_FILES = (
    ("CT_small.dcm", True),
    ("MR_small.dcm", True),
    ("MR_small_RLE.dcm", True),
    ("MR_small_jpeg_ls_lossless.dcm", True),
    ("JPEG2000.dcm", True),
    ("MR_truncated.dcm", False),  # pixel data shorter than rows x columns
    ("rtplan.dcm", False),        # an RT plan: no pixel data at all
    ("no_meta.dcm", False),       # no DICM preamble / file meta header
)

README = """SYNTHETIC DEMO CORPUS -- not medical data.

Made by `dinotrain demo` (launch.demo.synthetic.make_corpus, seed={seed}).
Every PNG here is procedurally generated: no patient, no real image. Latent attributes
(age -> bone density, sex -> silhouette, label -> lesion) are in metadata.csv.
The files in dicom/ are the public test files shipped inside pydicom (some deliberately broken).
"""


@dataclass(frozen=True)
class CorpusInfo:
    """What `make_corpus` wrote."""

    root: Path
    metadata: Path
    n_synthetic: int
    n_dicom: int
    n_dicom_broken: int
    counts: dict


# ----------------------------------------------------------------------------- helpers
def _rng(seed: int, modality: str, index: int) -> np.random.Generator:
    """An independent generator per (seed, modality, image): images do not depend on corpus size."""
    return np.random.default_rng([seed, MODALITIES.index(modality), index])


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """y, x in [-1, 1], y growing downwards (image rows)."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: random cells upsampled smoothly (anatomy variation)."""
    coarse = rng.standard_normal((cells, cells))
    return zoom(coarse, size / cells, order=3)[:size, :size]


def _ellipse(y, x, cy, cx, ry, rx, angle=0.0, power=2.0) -> np.ndarray:
    """Soft-edged (super)ellipse mask in [0, 1]."""
    ca, sa = np.cos(angle), np.sin(angle)
    dy, dx = y - cy, x - cx
    u = (dx * ca + dy * sa) / rx
    v = (-dx * sa + dy * ca) / ry
    d = np.abs(u) ** power + np.abs(v) ** power
    return np.clip((1.0 - d) * 8.0, 0.0, 1.0)


def bone_density(age: float, rng: np.random.Generator) -> float:
    """Relative bone mineral density: ~1.0 at 20, falling ~0.9%/year after, with spread."""
    return float(np.clip(1.05 - 0.009 * (age - 20.0) + rng.normal(0.0, 0.04), 0.25, 1.2))


def _latents(rng: np.random.Generator) -> tuple[float, str, float]:
    age = float(np.round(rng.uniform(18, 90)))
    sex = "F" if rng.random() < 0.5 else "M"
    return age, sex, bone_density(age, rng)


# ----------------------------------------------------------------------------- chest radiograph
def render_xr_chest(rng: np.random.Generator, size: int, age: float, sex: str, density: float,
                    nodule: bool) -> np.ndarray:
    """A PA chest radiograph look-alike: uint16 over the full range, bone bright, lungs dark."""
    y, x = _grid(size)
    male = sex == "M"
    # small pose/size variation so that no single pixel gives the sex away
    sy, sx = rng.normal(0, 0.03, 2)
    scale = rng.normal(1.0, 0.04)
    y, x = (y - sy) / scale, (x - sx) / scale

    shoulder = 0.92 if male else 0.78
    waist = 0.70 if male else 0.62
    # thorax: a superellipse whose half-width narrows from shoulders to waist
    half_w = shoulder + (waist - shoulder) * np.clip((y + 0.6) / 1.6, 0, 1)
    body = np.clip((half_w - np.abs(x)) * 10, 0, 1) * np.clip((y + 0.85) * 10, 0, 1)
    neck = _ellipse(y, x, -0.95, 0, 0.25, 0.16 if male else 0.13)
    body = np.maximum(body, neck)

    img = 0.55 * body  # soft tissue attenuation
    if not male:  # breast shadows: extra soft tissue over the lower lateral lung fields
        for side in (-1, 1):
            img += 0.18 * _ellipse(y, x, 0.45, side * 0.38, 0.24, 0.26) * body
    lungs = np.zeros_like(y)
    for side in (-1, 1):
        lungs = np.maximum(lungs, _ellipse(y, x, 0.0, side * 0.38, 0.62, 0.27 if male else 0.24, side * 0.08))
    img -= 0.38 * lungs
    heart = _ellipse(y, x, 0.28, 0.08, 0.28, 0.26 if male else 0.23)
    img += 0.30 * heart * lungs + 0.15 * heart

    bone = np.zeros_like(y)
    bone = np.maximum(bone, np.clip((0.07 - np.abs(x)) * 30, 0, 1) * np.clip((0.9 - np.abs(y)) * 10, 0, 1))
    for k in range(8):  # ribs: arcs bowing downwards laterally
        y0 = -0.58 + k * 0.135
        arc = y0 + 0.35 * x**2 - 0.05 * np.abs(x)
        rib = np.clip((0.022 + 0.003 * k - np.abs(y - arc)) * 60, 0, 1) * (np.abs(x) < half_w - 0.04)
        bone = np.maximum(bone, 0.8 * rib)
    for side in (-1, 1):  # clavicles
        clav = np.clip((0.03 - np.abs(y + 0.62 - 0.15 * (x * side - 0.3) ** 2)) * 50, 0, 1)
        bone = np.maximum(bone, clav * (np.abs(x) < shoulder * 0.8) * (x * side > 0.05))
    # bone contrast follows density (osteoporosis flattens ribs and spine into soft tissue)
    img += 0.45 * density * bone * body
    if nodule:
        side = rng.choice([-1, 1])
        cy, cx = rng.uniform(-0.3, 0.35), side * rng.uniform(0.25, 0.5)
        r = rng.uniform(0.045, 0.08)
        img += 0.35 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r**2)) * lungs

    img += 0.05 * _smooth_noise(rng, size, 6) * body
    img = gaussian_filter(img, 0.6)
    img = np.clip(img, 0, None)
    signal = img / max(float(img.max()), 1e-6)
    counts = rng.poisson(signal * 900.0 + 20.0) / 920.0  # quantum noise of the detector
    # 12-bit detector levels, shifted up to 16 bits: readers map 0..65535 to [0, 1]
    return (np.clip(np.rint(counts * 4095.0), 0, 4095) * 16).astype(np.uint16)


# ----------------------------------------------------------------------------- ultrasound
def render_us_breast(rng: np.random.Generator, size: int, label: str) -> np.ndarray:
    """An ultrasound-like sector fan with speckle: uint8."""
    y, x = _grid(size)
    apex_y = -1.05
    r = np.hypot(x, y - apex_y)
    theta = np.arctan2(x, y - apex_y)
    half_angle = np.deg2rad(rng.uniform(32, 40))
    fan = (np.abs(theta) < half_angle) & (r > 0.15) & (r < 2.0)

    depth = np.clip((r - 0.15) / 1.85, 0, 1)
    # layered tissue: skin, subcutaneous fat, glandular tissue, muscle; boundaries wavy
    wave = 0.05 * _smooth_noise(rng, size, 5)
    d = depth + wave
    echo = np.select(
        [d < 0.06, d < 0.3, d < 0.75],
        [1.0, 0.35, 0.75],
        0.5,
    ).astype(float)
    echo *= 1 + 0.25 * _smooth_noise(rng, size, 12)

    if label != "normal":
        cy, cx = rng.uniform(-0.1, 0.35), rng.uniform(-0.3, 0.3)
        ry, rx = rng.uniform(0.12, 0.2), rng.uniform(0.16, 0.28)
        if label == "benign":  # wider-than-tall, smooth margin, posterior enhancement
            mass = _ellipse(y, x, cy, cx, ry * 0.8, rx)
            behind = _ellipse(y, x, cy + ry * 1.6, cx, ry, rx * 0.7)
            echo = echo * (1 - 0.85 * mass) + 0.3 * behind * (1 - mass)
        else:  # taller-than-wide, spiculated margin, posterior acoustic shadow
            ang = np.arctan2(y - cy, x - cx)
            spikes = 1 + 0.25 * np.sin(7 * ang + rng.uniform(0, 6.28)) + 0.1 * np.sin(13 * ang)
            dist = np.hypot((y - cy) / (ry * 1.2), (x - cx) / (rx * 0.8)) / spikes
            mass = np.clip((1 - dist) * 8, 0, 1)
            shadow = np.clip((np.abs(x - cx) < rx * 0.6) * (y > cy) * 1.0, 0, 1)
            echo = echo * (1 - 0.9 * mass) * (1 - 0.6 * shadow * (1 - mass))

    # speckle: magnitude of a complex Gaussian (Rayleigh), slightly elongated laterally
    speckle = np.hypot(rng.standard_normal((size, size)), rng.standard_normal((size, size)))
    speckle = gaussian_filter(speckle, (0.6, 1.2)) / 1.25
    tgc = np.exp(-0.6 * depth)  # attenuation with depth, partly compensated
    img = echo * speckle * tgc * fan
    img = np.log1p(6 * img) / np.log1p(6 * 2.5)  # log compression as on the scanner
    return np.clip(img * 255, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- CT slice
def render_ct_chest(rng: np.random.Generator, size: int, age: float, sex: str, density: float,
                    nodule: bool) -> np.ndarray:
    """An axial chest CT slice look-alike: uint16 holding (HU + 1024) x 16."""
    y, x = _grid(size)
    male = sex == "M"
    rx = (0.88 if male else 0.8) * rng.normal(1, 0.03)
    ry = (0.58 if male else 0.6) * rng.normal(1, 0.03)
    hu = np.full_like(y, -1000.0)  # air
    body = _ellipse(y, x, 0.0, 0.0, ry, rx, power=2.2)
    inner = _ellipse(y, x, 0.02, 0.0, ry - 0.06, rx - 0.07, power=2.2)
    hu = hu * (1 - body) + body * (-100.0)  # subcutaneous fat
    hu = hu * (1 - inner) + inner * 40.0    # muscle / soft tissue
    if not male:
        for side in (-1, 1):
            breast = _ellipse(y, x, -ry + 0.02, side * 0.4, 0.14, 0.22) * (1 - inner)
            hu = hu * (1 - breast) + breast * (-60.0)
    lungs = np.zeros_like(y)
    for side in (-1, 1):
        lungs = np.maximum(lungs, _ellipse(y, x, -0.02, side * 0.37, ry * 0.72, rx * 0.36))
    hu = hu * (1 - lungs) + lungs * -850.0
    vessels = gaussian_filter((rng.random((size, size)) > 0.995).astype(float), 0.8) * 40
    hu += np.clip(vessels, 0, 1) * 700 * lungs
    heart = _ellipse(y, x, -0.05, 0.08, 0.22, 0.24) * (1 - 0.7 * lungs)
    hu = hu * (1 - heart) + heart * 45.0
    # vertebra and ribs: HU of bone follows density (older -> less dense)
    bone_hu = 250 + 650 * density
    vert = _ellipse(y, x, ry - 0.16, 0.0, 0.1, 0.11)
    cortex = vert - _ellipse(y, x, ry - 0.16, 0.0, 0.07, 0.08)
    hu = hu * (1 - vert) + vert * (150 + 200 * density) + cortex * (bone_hu - 150 - 200 * density)
    ang = np.arctan2(y / ry, x / rx)
    rad = np.hypot(y / ry, x / rx)
    ribs = (np.abs(rad - 0.9) < 0.04) * (np.cos(ang * 9) > 0.6)
    hu = np.where(ribs, bone_hu, hu)
    if nodule:
        side = rng.choice([-1, 1])
        cy, cx = rng.uniform(-0.2, 0.15), side * rng.uniform(0.25, 0.45)
        nod = _ellipse(y, x, cy, cx, rng.uniform(0.04, 0.07), rng.uniform(0.04, 0.07)) * lungs
        hu = hu * (1 - nod) + nod * 30.0
    hu = gaussian_filter(hu, 0.7) + rng.normal(0, 15, hu.shape)  # reconstruction blur + noise
    return (np.clip(np.rint(hu + 1024), 0, 4095) * 16).astype(np.uint16)


# ----------------------------------------------------------------------------- corpus
def synthetic_rows(n: int, seed: int = 0, size: int = 128):
    """Yield (relative path, image array, metadata row) for n images spread over the modalities.

    Image i goes to modality i % 3, so every modality gets n/3 images and a prefix of the
    stream is a smaller corpus. Split: 70/15/15 by a hash of the image key (stable under n).
    """
    for i in range(n):
        modality = MODALITIES[i % len(MODALITIES)]
        index = i // len(MODALITIES)
        rng = _rng(seed, modality, index)
        age, sex, density = _latents(rng)
        if modality == "us_breast":
            label = US_LABELS[int(rng.integers(0, 3))]
            img = render_us_breast(rng, size, label)
            view = "sector"
        else:
            nodule = bool(rng.random() < 0.35)
            label = "nodule" if nodule else "no_nodule"
            render = render_xr_chest if modality == "xr_chest" else render_ct_chest
            img = render(rng, size, age, sex, density, nodule)
            view = "PA" if modality == "xr_chest" else "axial"
        key = f"{modality}_{index:05d}"
        h = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) % 100
        split = "train" if h < 70 else ("val" if h < 85 else "test")
        rel = f"{modality}/{key}.png"
        row = {
            "path": rel, "label": label, "labels_all": label, "age": int(age), "sex": sex,
            "view": view, "modality": modality, "split": split, "patient_id": f"synth-{seed}-{key}",
            "bone_density": f"{density:.4f}", "source": "synthetic", "source_path": "",
            "license": "CC0 (procedurally generated)",
        }
        yield rel, img, row


def _save_png(path: Path, img: np.ndarray) -> None:
    """8-bit as L, 16-bit as I;16 (PIL keeps all 16 bits in the PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.dtype not in (np.uint8, np.uint16) or img.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D uint8 or uint16 image, got {img.dtype} {img.shape}")
    Image.fromarray(img).save(path)  # uint16 -> mode I;16, uint8 -> L


def copy_pydicom_files(root: Path) -> list[dict]:
    """Copy pydicom's bundled test DICOMs into root/dicom; rows say which are expected to fail."""
    from pydicom.data import get_testdata_file

    rows = []
    for name, decodes in DICOM_FILES:
        src = get_testdata_file(name)
        if src is None:  # a pydicom version without this file: skip it rather than download
            continue
        dst = root / "dicom" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        rows.append({
            "path": f"dicom/{name}", "label": "real_dicom" if decodes else "broken_dicom",
            "labels_all": "", "age": "", "sex": "", "view": "", "modality": "dicom", "split": "train",
            "patient_id": f"pydicom-{name}", "bone_density": "", "source": "pydicom test files",
            "source_path": f"pydicom/data/test_files/{name}", "license": "pydicom (MIT) test data",
        })
    return rows


def make_corpus(out: str | Path, n: int = 240, seed: int = 0, size: int = 128, dicom: bool = True,
                progress: bool = False) -> CorpusInfo:
    """Write the synthetic corpus (PNGs + metadata.csv + README.txt) under `out`.

    `n` synthetic images spread evenly over MODALITIES, `size` x `size` pixels; `dicom=True`
    adds pydicom's test files. Deterministic: the same (n, seed, size) gives the same bytes.
    """
    if n < len(MODALITIES):
        raise ValueError(f"make_corpus: n={n} is too small, need at least {len(MODALITIES)} (one per modality)")
    if size < 32:
        raise ValueError(f"make_corpus: size={size} is too small for the anatomy to show, use >= 32")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rows, counts = [], {}
    stream = synthetic_rows(n, seed, size)
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=n, desc="synthetic corpus", unit="img")
    for rel, img, row in stream:
        _save_png(root / rel, img)
        rows.append(row)
        counts[row["modality"]] = counts.get(row["modality"], 0) + 1
    dicom_rows = copy_pydicom_files(root) if dicom else []
    broken = sum(r["label"] == "broken_dicom" for r in dicom_rows)
    meta = root / "metadata.csv"
    with meta.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows + dicom_rows)
    (root / "README.txt").write_text(README.format(seed=seed))
    if dicom_rows:
        counts["dicom"] = len(dicom_rows)
    return CorpusInfo(root, meta, len(rows), len(dicom_rows), broken, counts)
