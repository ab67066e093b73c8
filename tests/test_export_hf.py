"""A run's export loads like `microsoft/rad-dino`: `AutoImageProcessor` + `AutoModel` on a PIL
image give the teacher's features as `dinotrain eval` computes them, and the files are readable
by the group that shares them (0666 less the umask, as a plain file).

The run is real (2 steps of vit_tiny at 56 px on 48 JSRT radiographs, `dinotrain train` in a
subprocess); the images are real JSRT (square, 518 px), COVID-CXR (not square, JPEG) and HAM10000
(RGB), so the resize, crop, grayscale and colour paths of both preprocessings are compared.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_run_errors import REPO, tiny_config

transformers = pytest.importorskip("transformers")

# square images: the same PIL bicubic on the same 8-bit pixels, up to float32 round-off
PIXEL_ATOL = 1e-5
FEATURE_ATOL = 1e-4  # the same network (ours vs transformers' Dinov2Model) on the same pixels
# images that are not square: transformers truncates the resized long side (int), the eval rounds it,
# so where the two differ the crop moves by one pixel; measured: cosine >= 0.9979 over 40 COVID-CXR
# and 10 HAM10000 images with this 56 px run
NOT_SQUARE_MIN_COSINE = 0.995


def _run(*args: str, umask: int = 0o022, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "DINOTRAIN_DEBUG")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "dinotrain", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout, preexec_fn=lambda: os.umask(umask))


@pytest.fixture(scope="module")
def run(cxr_shards, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("export_hf")
    cfg = tiny_config(base / "cfg.yaml", cxr_shards, base / "run", layerscale_init=0.1)
    res = _run("train", str(cfg), "data.mean=0.5", "data.std=0.25")  # not the defaults: the export must carry them
    assert res.returncode == 0, res.stderr[-3000:]
    return base / "run"


def _images(test_data: Path) -> tuple[list[Image.Image], list[Image.Image]]:
    """(square, not square) real images: JSRT radiographs and the centre of HAM10000 dermoscopy
    photos (RGB: the colour path); COVID-CXR radiographs and whole HAM10000 photos."""
    def opened(paths):
        out = [Image.open(p) for p in paths]
        for im in out:
            im.load()
        return out

    derm = opened(sorted((test_data / "ham10000_derm" / "images").iterdir())[:3])
    covid = opened(sorted((test_data / "covid_cxr" / "images").iterdir())[:12])
    square = opened(sorted((test_data / "jsrt" / "images").iterdir())[:3])
    square += [im.crop((0, 0, min(im.size), min(im.size))) for im in derm]
    not_square = [im for im in covid if im.width != im.height] + derm
    assert any(im.mode == "RGB" for im in square) and len(not_square) >= 8
    return square, not_square


def test_export_has_the_runs_preprocessing(run):
    cfg = json.loads((run / "export" / "latest" / "hf" / "preprocessor_config.json").read_text())
    assert cfg["image_processor_type"] == "BitImageProcessor"
    assert cfg["size"] == {"shortest_edge": 56} and cfg["crop_size"] == {"height": 56, "width": 56}
    assert cfg["image_mean"] == [0.5] * 3 and cfg["image_std"] == [0.25] * 3
    assert cfg["resample"] == 3 and cfg["do_center_crop"] and cfg["do_convert_rgb"]


def test_auto_image_processor_and_auto_model_give_the_eval_features(run, test_data):
    from dinotrain.eval.features import preprocess
    from dinotrain.eval.loading import load_model

    hf_dir = run / "export" / "latest" / "hf"
    processor = transformers.AutoImageProcessor.from_pretrained(str(hf_dir))
    hf = transformers.AutoModel.from_pretrained(str(hf_dir)).eval()
    ours = load_model(str(run))  # the run's teacher and normalisation, as `dinotrain eval RUN` reads them
    assert (ours.mean, ours.std) == (0.5, 0.25)
    square, not_square = _images(test_data)

    def both(images):
        x_hf = processor(images=images, return_tensors="pt")["pixel_values"]
        x_ours = torch.from_numpy(np.stack([preprocess(im, 56, ours.mean, ours.std) for im in images]))
        with torch.no_grad():
            return (x_hf, x_ours, hf(pixel_values=x_hf).pooler_output,
                    ours.model.forward_features(x_ours)["x_norm_clstoken"])

    x_hf, x_ours, f_hf, f_ours = both(square)
    assert x_hf.shape == x_ours.shape == (len(square), 3, 56, 56)
    torch.testing.assert_close(x_hf, x_ours, atol=PIXEL_ATOL, rtol=0)
    torch.testing.assert_close(f_hf, f_ours, atol=FEATURE_ATOL, rtol=1e-4)
    # features of different images differ: the comparison is not between constants
    assert torch.cdist(f_ours, f_ours).max() > 100 * FEATURE_ATOL
    *_, f_hf, f_ours = both(not_square)
    assert torch.nn.functional.cosine_similarity(f_hf, f_ours).min() >= NOT_SQUARE_MIN_COSINE


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_exported_files_are_readable_like_plain_files(run, tmp_path):
    latest = _modes(run / "export" / "latest")  # the run was trained under umask 022
    assert {"hf/model.safetensors", "hf/preprocessor_config.json", "dinov2.safetensors"} <= set(latest)
    assert set(latest.values()) == {0o644}, latest
    res = _run("export", str(run), "--format", "hf", "--out", str(tmp_path / "out"), umask=0o027)
    assert res.returncode == 0, res.stderr[-3000:]
    modes = _modes(tmp_path / "out")
    assert set(modes) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert set(modes.values()) == {0o640}, modes  # the umask is respected: group-readable, others not
    exported = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert exported == json.loads((run / "export" / "latest" / "hf" / "preprocessor_config.json").read_text())
