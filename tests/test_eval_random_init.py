"""One meaning of "random init": the network a run starts from, not the schema's defaults.

Seen (issue 22): `random:vit_tiny` was built at the schema's LayerScale 1e-5 while the shipped
small recipes train from 0.1; its CLS token was one vector for every image (pairwise cosine 1.000
on four JSRT images), so the demo's "random init" baseline lay below chance. `random:RUN_DIR` and
`random:CONFIG.yaml` now build the recipe's own step-0 network, and `random:ARCH` says which init
it is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinotrain.config import load_config
from dinotrain.eval.features import preprocess
from dinotrain.eval.loading import describe_random, load_model
from dinotrain.eval.specs import SpecError
from dinotrain.train.initial import save_initial_teacher

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs/pretrain/tiny_cpu.yaml"


def cls_cosines(spec: str, images: list[Image.Image]) -> np.ndarray:
    """Off-diagonal cosines of the CLS features of `images` through model `spec` (eval preprocessing)."""
    lm = load_model(spec)
    x = torch.from_numpy(np.stack([preprocess(im, 56, lm.mean, lm.std) for im in images]))
    with torch.no_grad():
        cls = torch.nn.functional.normalize(lm.model.forward_features(x)["x_norm_clstoken"], dim=-1)
    cos = (cls @ cls.T).numpy()
    return cos[~np.eye(len(images), dtype=bool)]


def test_schema_init_is_image_blind_and_the_recipe_init_is_not(test_data):
    images = [Image.open(p) for p in sorted((test_data / "jsrt" / "images").glob("*.png"))[:4]]
    schema = cls_cosines("random:vit_tiny", images)
    recipe = cls_cosines(f"random:{TINY}", images)
    assert schema.min() > 0.999  # the situation the issue saw: one CLS vector for every image
    assert recipe.mean() < 0.99 and recipe.mean() < schema.mean() - 0.005, (recipe, schema)


def test_random_names_say_which_init_they_are(tmp_path):
    assert describe_random("random:vit_tiny:3") == (
        "vit_tiny at the schema's default init (LayerScale 1e-05, seed 3), not a run's recipe: random:RUN_DIR or "
        "random:CONFIG.yaml builds the network a run starts from")
    assert describe_random(f"random:{TINY}") == (
        "vit_tiny initialised by the run's recipe (LayerScale 0.1, seed 0), untrained")
    assert "seed 4" in describe_random(f"random:{TINY}:4")
    assert describe_random(str(TINY)) is None
    with pytest.raises(SpecError, match="unknown arch 'nope' and not a run folder or config file"):
        describe_random("random:nope")
    with pytest.raises(SpecError, match="seed 'x' is not an integer"):
        load_model("random:vit_tiny:x")


def test_random_recipe_is_the_studys_initial_teacher(tmp_path):
    cfg = load_config(TINY, ["train.seed=3"])
    saved = save_initial_teacher(cfg, tmp_path / "init")  # the study's baseline folder
    a = load_model(str(saved))
    assert load_model(f"random:{TINY}:3").fingerprint == a.fingerprint
    assert load_model(f"random:{saved}").fingerprint == a.fingerprint  # the folder's config, its seed
    assert load_model(f"random:{TINY}").fingerprint != a.fingerprint  # the seed decides the weights
    gammas = [v for k, v in a.model.state_dict().items() if k.endswith(("ls1.gamma", "ls2.gamma"))]
    assert gammas and all(torch.allclose(g, torch.full_like(g, 0.1)) for g in gammas)  # not the schema's 1e-5


@pytest.mark.slow
def test_random_run_dir_is_the_runs_own_step_0_network(cxr_shards, tmp_path):
    """The lr is 0 at step 0 (linear warm-up), so the teacher a 1-step run exports is its step-0
    network; `random:RUN_DIR` must rebuild it (same config and seed, one process)."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dinotrain", "train", str(TINY), f"output_dir={run}", "train.seed=5",
           f"data.sources=[{{name: cxr, path: '{cxr_shards}'}}]", "data.num_threads=1", "train.max_steps=1",
           "optim.warmup_steps=1", "ssl.warmup_teacher_temp_steps=1", "optim.freeze_last_layer_steps=1",
           "train.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    step0 = load_file(str(run / "export" / "latest" / "dinov2.safetensors"))
    rebuilt = load_model(f"random:{run}").model.state_dict()
    assert set(step0) == set(rebuilt)
    # equal but for the rounding of step 1's EMA (t * m + s * (1 - m) with s = t: a float ulp)
    for k in step0:
        torch.testing.assert_close(rebuilt[k], step0[k], rtol=0, atol=1e-7, msg=k)
    other_seed = load_model(f"random:{run}:6").model.state_dict()
    assert (other_seed["blocks.0.attn.qkv.weight"] - step0["blocks.0.attn.qkv.weight"]).abs().max() > 1e-2


def test_eval_prints_which_init_each_random_model_is(test_data, tmp_path, capsys):
    from dinotrain.cli import main as cli_main

    rc = cli_main(["eval", "random:vit_tiny", f"random:{TINY}", "--tasks", "jsrt_sex", "--data", str(test_data),
                   "--out", str(tmp_path / "e"), "--max-samples", "24", "--resolution", "56", "--bootstrap", "10",
                   "--no-plot", "--no-progress", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "random:vit_tiny: vit_tiny at the schema's default init (LayerScale 1e-05, seed 0), not a run's recipe" in out
    assert f"random:{TINY}: vit_tiny initialised by the run's recipe (LayerScale 0.1, seed 0), untrained" in out
