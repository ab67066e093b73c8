"""Hostile inputs to `train`, `export`, `eval` and `launch`: one line naming the thing and the fix, exit 2.

Every bad input is made here: a text file and a damaged safetensors given as weights, a file in
the output path, a folder of images given as shards, a run folder relaunched with another
model. Each runs the real CLI in a subprocess (stderr and exit code are the behaviour).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def dinotrain(*args: str, debug: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "DINOTRAIN_DEBUG")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if debug:
        env["DINOTRAIN_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "dinotrain", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def one_error_line(res: subprocess.CompletedProcess, command: str) -> str:
    """The single stderr line of a refused command (log lines of the run before it are allowed)."""
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "[rank" not in res.stderr, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith(f"dinotrain {command}: error: ")]
    assert len(errors) == 1, res.stderr[-3000:]
    return errors[0]


def tiny_config(path: Path, shards: Path, out: Path, **model) -> Path:
    cfg = {
        "output_dir": str(out),
        "data": {"sources": [{"name": "jsrt", "path": str(shards)}], "batch_size_per_gpu": 2,
                 "global_crops_size": 56, "local_crops_size": 28, "local_crops_number": 2, "num_threads": 1,
                 "device": "cpu"},
        "model": {"arch": "vit_tiny", "img_size": 56, **model},
        "ssl": {"head_n_prototypes": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16,
                "warmup_teacher_temp_steps": 1},
        "optim": {"warmup_steps": 1, "freeze_last_layer_steps": 1},
        "train": {"max_steps": 2, "log_every": 1, "checkpoint_every": 2, "export_every": 2, "progress": False,
                  "device": "cpu"},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(cxr_shards, tmp_path_factory) -> tuple[Path, Path]:
    """(config, run folder) of a finished 2-step vit_tiny run: config.yaml, ckpt/step_0000002, export/."""
    base = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(base / "cfg.yaml", cxr_shards, base / "run")
    res = dinotrain("train", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    return cfg, base / "run"


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- train: inputs
def test_missing_data_path_is_named_and_nothing_is_written(cxr_shards, tmp_path):
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run")
    line = one_error_line(dinotrain("train", str(cfg), f"data.sources.0.path={tmp_path / 'nope'}"), "train")
    assert f"data.sources.0.path={tmp_path / 'nope'}" in line and "shards build" in line
    assert not (tmp_path / "run").exists()


def test_folder_of_images_is_not_taken_for_shards(cxr_shards, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    cfg = tiny_config(tmp_path / "cfg.yaml", images, tmp_path / "run")
    line = one_error_line(dinotrain("train", str(cfg)), "train")
    assert "no manifest.json" in line and f"dinotrain shards build {images}" in line


def test_output_dir_below_a_file_is_refused(cxr_shards, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file where a folder should be")
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, blocker / "run")
    line = one_error_line(dinotrain("train", str(cfg)), "train")
    assert f"{blocker} is a file, not a folder" in line and "output_dir" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_output_dir_without_write_permission_is_refused(cxr_shards, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, locked / "run")
    assert "not writable" in one_error_line(dinotrain("train", str(cfg)), "train")


def test_text_file_as_pretrained_weights(cxr_shards, tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("exported weights are in the other folder\n")
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", pretrained=str(text))
    res = dinotrain("train", str(cfg))
    line = one_error_line(res, "train")
    assert f"model.pretrained {text} is not a weights file" in line and "KeyError" not in res.stderr
    assert not (tmp_path / "run").exists()
    # the traceback is still there for whoever asks
    debug = dinotrain("train", str(cfg), debug=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "UserError" in debug.stderr


def test_under_torchrun_the_error_is_said_once_and_reaches_the_agent_summary(cxr_shards, tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("not weights\n")
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", pretrained=str(text))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "DINOTRAIN_DEBUG")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
                          "-m", "dinotrain", "train", str(cfg)], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=300)
    assert res.returncode != 0
    said = [ln for ln in res.stderr.splitlines() if ln.startswith("dinotrain train: error: ")]
    assert len(said) == 1 and f"model.pretrained {text} is not a weights file" in said[0]  # rank 1 stays quiet
    assert "[rank" not in res.stderr and "KeyError" not in res.stderr
    # torchrun's own failure summary shows the same line instead of a link to its docs
    root = res.stderr[res.stderr.index("Root Cause"):]
    assert f"traceback : model.pretrained {text} is not a weights file" in root


def damaged_safetensors(path: Path) -> Path:
    """A header length far past the file's end, as a truncated download or a renamed file has."""
    path.write_bytes(struct.pack("<Q", 2**40) + b'{"cls_token": ')
    return path


def test_damaged_safetensors_as_pretrained_weights(cxr_shards, tmp_path):
    bad = damaged_safetensors(tmp_path / "model.safetensors")
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", pretrained=str(bad))
    res = dinotrain("train", str(cfg))
    line = one_error_line(res, "train")
    assert str(bad) in line and "header too large" not in res.stderr


def test_pretrained_weights_of_another_width_name_the_arch_that_fits(cxr_shards, tmp_path):
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "small.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 384), "pos_embed": torch.zeros(1, 17, 384)}, str(weights))
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", pretrained=str(weights))
    line = one_error_line(dinotrain("train", str(cfg)), "train")
    assert "width 384" in line and "model.arch=vit_small" in line


def test_missing_keys_message_offers_config_keys_not_a_python_argument():
    """convert's 'pass strict=False' is a Python argument; the CLI names the config keys instead."""
    from dinotrain.errors import describe
    from dinotrain.models.convert import from_dinov2, to_dinov2
    from dinotrain.models.vit import VisionTransformer

    plain = to_dinov2(VisionTransformer(img_size=28, patch_size=14, embed_dim=24, depth=1, num_heads=2))
    with pytest.raises(ValueError) as info:
        from_dinov2(plain, VisionTransformer(img_size=28, patch_size=14, embed_dim=24, depth=1, num_heads=2,
                                             num_register_tokens=4))
    assert "strict=False" in str(info.value)  # the Python API's advice stays for Python callers
    line = describe(info.value)
    assert "strict=False" not in line and "model.num_register_tokens" in line and "register_tokens" in line


def test_yaml_flow_syntax_without_spaces_gets_a_hint(tmp_path):
    line = one_error_line(dinotrain("train", "--print-config", "data.sources=[{name:x,path:y}]"), "train")
    assert "name:x" in line and "space after each colon" in line and "'name: x'" in line
    f = tmp_path / "flow.yaml"
    f.write_text("data:\n  sources: [{name:cxr,path:/data}]\n")
    line = one_error_line(dinotrain("train", "--print-config", str(f)), "train")
    assert "space after each colon" in line and "'name: cxr'" in line


# ----------------------------------------------------------------------------- train: the run folder
def test_relaunch_with_another_arch_is_refused_before_writing(trained):
    cfg, run = trained
    before = snapshot(run)
    line = one_error_line(dinotrain("train", str(cfg), "model.arch=vit_small"), "train")
    assert "model.arch=vit_tiny (now vit_small)" in line
    assert "new output_dir" in line and "train.resume=false" in line
    assert snapshot(run) == before  # config.yaml, checkpoints, exports: untouched
    # ... so the run still exports
    res = dinotrain("export", str(run), "--out", str(run.parent / "still_exports"))
    assert res.returncode == 0, res.stderr[-2000:]


def test_relaunch_with_other_head_sizes_names_every_differing_key(trained):
    cfg, run = trained
    line = one_error_line(dinotrain("train", str(cfg), "ssl.head_n_prototypes=128", "model.patch_size=7"), "train")
    assert "ssl.head_n_prototypes=64 (now 128)" in line and "model.patch_size=14 (now 7)" in line


def test_launch_refuses_the_same_relaunch_before_submitting(trained):
    cfg, run = trained
    before = snapshot(run)
    line = one_error_line(dinotrain("launch", str(cfg), "model.arch=vit_small", "launch.cluster=local"), "launch")
    assert "model.arch=vit_tiny (now vit_small)" in line
    assert snapshot(run) == before and not (run / "jobs").exists()


def test_resume_false_sets_the_old_run_aside_and_starts_over(cxr_shards, tmp_path):
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run")
    run = tmp_path / "run"
    assert dinotrain("train", str(cfg)).returncode == 0
    old = (run / "config.yaml").read_text()
    res = dinotrain("train", str(cfg), "model.arch=vit_small", "train.resume=false")
    assert res.returncode == 0, res.stderr[-3000:]
    (aside,) = (run / "replaced").iterdir()
    assert (aside / "config.yaml").read_text() == old and (aside / "ckpt" / "step_0000002").is_dir()
    assert "arch: vit_small" in (run / "config.yaml").read_text()
    assert "was moved to" in res.stderr and str(aside) in res.stderr


# ----------------------------------------------------------------------------- export
def test_export_refuses_a_folder_holding_a_model_unless_overwrite(trained, tmp_path):
    _, run = trained
    out = tmp_path / "exported"
    first = dinotrain("export", str(run), "--out", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    # the normal path is quiet: no torch.distributed notice (nor any other warning)
    assert "Warning" not in first.stderr and "torch.distributed is disabled" not in first.stderr, first.stderr
    before = snapshot(out)
    line = one_error_line(dinotrain("export", str(run), "--out", str(out), "--format", "dinov2"), "export")
    assert "already holds a model (config.json, model.safetensors)" in line and "--overwrite" in line
    assert snapshot(out) == before
    again = dinotrain("export", str(run), "--out", str(out), "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]


def test_export_out_a_file_and_bad_checkpoints(tmp_path):
    target = tmp_path / "model.txt"
    target.write_text("x")
    text = tmp_path / "weights.pth"
    text.write_text("not weights\n")
    bad = damaged_safetensors(tmp_path / "bad.safetensors")
    line = one_error_line(dinotrain("export", str(text), "--out", str(target)), "export")
    assert f"--out {target} is a file" in line
    line = one_error_line(dinotrain("export", str(text), "--out", str(tmp_path / "o")), "export")
    assert f"CHECKPOINT {text} is not a weights file" in line
    res = dinotrain("export", str(bad), "--out", str(tmp_path / "o"))
    assert str(bad) in one_error_line(res, "export") and "header too large" not in res.stderr


# ----------------------------------------------------------------------------- eval
def test_eval_bad_model_file_and_out_a_file(tmp_path, test_data):
    bad = damaged_safetensors(tmp_path / "bad.safetensors")
    res = dinotrain("eval", str(bad), "--tasks", "jsrt_sex", "--data", str(test_data), "--max-samples", "20",
                    "--out", str(tmp_path / "e"))
    assert f"model {bad} is not a weights file" in one_error_line(res, "eval")
    target = tmp_path / "results.txt"
    target.write_text("x")
    res = dinotrain("eval", "random:vit_tiny", "--tasks", "jsrt_sex", "--data", str(tmp_path), "--out", str(target))
    assert f"--out {target} is a file" in one_error_line(res, "eval")
    missing = tmp_path / "no_data"
    res = dinotrain("eval", "random:vit_tiny", "--tasks", "jsrt_sex", "--data", str(missing), "--out", str(tmp_path / "e"))
    assert f"--data {missing}" in one_error_line(res, "eval")


# ----------------------------------------------------------------------------- the run-folder rules, in process
def saved_run(folder: Path, *overrides: str, world_size: int = 1, drop: tuple[str, ...] = ()) -> None:
    """A run folder as the trainer leaves it: config.yaml and a complete checkpoint (meta.json + .metadata)."""
    import json

    from dinotrain.config import load_config, to_yaml

    data = yaml.safe_load(to_yaml(load_config(None, [f"output_dir={folder}", *overrides])))
    for key in drop:
        section, name = key.split(".")
        del data[section][name]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(data))
    ckpt = folder / "ckpt" / "step_0000005"
    ckpt.mkdir(parents=True)
    (ckpt / ".metadata").write_bytes(b"")
    (ckpt / "meta.json").write_text(json.dumps({"step": 5, "world_size": world_size}))


def test_a_config_written_before_a_key_existed_still_resumes(tmp_path):
    from dinotrain.config import load_config
    from dinotrain.errors import UserError
    from dinotrain.train.run_dir import check_resumable

    saved_run(tmp_path, "model.arch=vit_tiny", drop=("model.ffn", "ssl.ibot_separate_head"))
    check_resumable(load_config(None, [f"output_dir={tmp_path}", "model.arch=vit_tiny"]), world_size=1)
    with pytest.raises(UserError, match=r"model.arch=vit_tiny \(now vit_small\)"):
        check_resumable(load_config(None, [f"output_dir={tmp_path}", "model.arch=vit_small"]), world_size=1)


def test_data_keys_count_only_at_the_checkpoints_process_count(tmp_path):
    """The loader's saved position fits the same batch/seed/sources at the same process count; with
    another count the loader restarts its order, so a new batch size is fine there."""
    from dinotrain.config import load_config
    from dinotrain.errors import UserError
    from dinotrain.train.run_dir import check_resumable

    saved_run(tmp_path, "data.batch_size_per_gpu=4", world_size=2)
    bigger = load_config(None, [f"output_dir={tmp_path}", "data.batch_size_per_gpu=8"])
    with pytest.raises(UserError, match=r"data.batch_size_per_gpu=4 \(now 8\)"):
        check_resumable(bigger, world_size=2)
    check_resumable(bigger, world_size=4)
    fresh = load_config(None, [f"output_dir={tmp_path}", "data.batch_size_per_gpu=8", "train.resume=false"])
    check_resumable(fresh, world_size=2)  # not resuming: nothing to fit


def test_pretrained_head_of_other_sizes_names_the_ssl_keys(cxr_shards, tmp_path):
    import torch
    from safetensors.torch import save_file

    head = tmp_path / "dino_head.safetensors"  # RAD-DINO's layout, with a small head: 128 prototypes, bottleneck 16
    save_file({"mlp.0.weight": torch.zeros(32, 192), "mlp.0.bias": torch.zeros(32),
               "last_layer.weight_g": torch.ones(128, 1), "last_layer.weight_v": torch.zeros(128, 16)}, str(head))
    cfg = tiny_config(tmp_path / "cfg.yaml", cxr_shards, tmp_path / "run", pretrained_head=str(head))
    line = one_error_line(dinotrain("train", str(cfg)), "train")
    assert "128 prototypes" in line and "ssl.head_n_prototypes=128 ssl.head_bottleneck_dim=16" in line
    assert not (tmp_path / "run").exists()
