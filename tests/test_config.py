"""The typed schema: defaults, YAML deltas, dotlist overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dinotrain.config import WARMUPS, ConfigError, iter_fields, load_config, save_config, schema, to_yaml

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_reference_recipe():
    cfg = load_config()
    # DINOv2 / RAD-DINO values (DESIGN.md section 5)
    assert cfg.ssl.head_n_prototypes == 65536 and cfg.ssl.head_hidden_dim == 2048
    assert cfg.ssl.head_bottleneck_dim == 256 and cfg.ssl.head_nlayers == 3
    assert (cfg.ssl.dino_loss_weight, cfg.ssl.ibot_loss_weight, cfg.ssl.koleo_loss_weight) == (1.0, 1.0, 0.1)
    assert (cfg.ssl.student_temp, cfg.ssl.warmup_teacher_temp, cfg.ssl.teacher_temp) == (0.1, 0.04, 0.07)
    assert (cfg.ssl.momentum_teacher, cfg.ssl.final_momentum_teacher) == (0.992, 1.0)
    assert cfg.ssl.center_momentum == 0.9 and cfg.ssl.sinkhorn_iterations == 3
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end) == (0.04, 0.4)
    assert (cfg.optim.layerwise_decay, cfg.optim.patch_embed_lr_mult, cfg.optim.clip_grad) == (0.9, 0.2, 3.0)
    assert list(cfg.data.global_crops_scale) == [0.32, 1.0] and list(cfg.data.local_crops_scale) == [0.05, 0.32]
    assert (cfg.data.global_crops_number, cfg.data.local_crops_number) == (2, 8)
    assert (cfg.data.mean, cfg.data.std) == (0.5307, 0.2583)
    assert (cfg.ssl.mask_ratio_min, cfg.ssl.mask_ratio_max) == (0.1, 0.5)
    assert cfg.model.arch == "vit_base" and cfg.model.patch_size == 14 and cfg.model.num_register_tokens == 0
    for section in ("data", "model", "ssl", "optim", "train", "parallel", "launch", "eval", "output_dir"):
        assert section in cfg


def test_every_field_documented():
    undocumented = [k for k, f in iter_fields() if not f.metadata.get("help")]
    assert undocumented == []


def test_warmups_must_fit_in_the_run():
    """DINOv2's 37,500-step teacher warm-up in a 35,000-step run never reaches its temperature:
    every warm-up longer than train.max_steps is refused up front, naming the fix."""
    cfg = load_config(REPO / "configs/pretrain/vitb14_cxr.yaml")
    for key in WARMUPS:
        assert OmegaConf.select(cfg, key) <= cfg.train.max_steps, key
    with pytest.raises(ConfigError) as e:
        load_config(None, ["ssl.warmup_teacher_temp_steps=37500", "train.max_steps=35000"])
    msg = str(e.value)
    assert "ssl.warmup_teacher_temp_steps=37500" in msg and "train.max_steps=35000" in msg
    assert "set ssl.warmup_teacher_temp_steps<=35000 or raise train.max_steps" in msg and "\n" not in msg
    for key in WARMUPS:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, ["train.max_steps=10", *(f"{k}={11 if k == key else 0}" for k in WARMUPS)])
    # equal to the run is allowed (the warm-up ends with the run), and so are zeros
    load_config(None, ["train.max_steps=10", *(f"{k}=10" for k in WARMUPS)])
    load_config(None, ["train.max_steps=1", *(f"{k}=0" for k in WARMUPS)])


def test_yaml_delta_and_dotlist_override(tmp_path):
    # a shorter run needs its warm-ups to fit (see test_warmups_must_fit_in_the_run)
    cfg = load_config(REPO / "configs/pretrain/vitb14_cxr.yaml", ["optim.lr=1e-3", "train.max_steps=100",
                                                                  "optim.warmup_steps=10", "ssl.warmup_teacher_temp_steps=30", "optim.freeze_last_layer_steps=1"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.train.max_steps == 100
    assert cfg.data.sources[0].name == "cxr"
    assert cfg.data.sources[0].weight == 1.0  # schema default filled into a list item
    assert cfg.parallel.mixed_precision == "fp16"
    # untouched keys keep the schema default
    assert cfg.optim.weight_decay == 0.04


@pytest.mark.parametrize("path", sorted((REPO / "configs/pretrain").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pretrain_configs_load_and_hold_only_deltas(path):
    load_config(path)
    delta = OmegaConf.to_container(OmegaConf.load(path))
    defaults = OmegaConf.to_container(schema())

    def same_as_default(d, ref, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and isinstance(ref.get(k), dict):
                yield from same_as_default(v, ref[k], f"{prefix}{k}.")
            elif ref.get(k) == v:
                yield prefix + k

    assert list(same_as_default(delta, defaults)) == [], "YAML files hold only deltas to the schema"


def test_typo_suggests_nearest_key():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.lrr=1e-3"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "did you mean 'optim.lr'" in msg and "\n" not in msg


def test_typo_in_yaml_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  atn_backend: sdpa\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value) and "model.attn_backend" in str(e.value)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.max_steps=abc"])
    assert "train.max_steps" in str(e.value)


def test_enum_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.attn_backend=flash"])
    assert "model.attn_backend" in str(e.value) and "auto, sdpa, xformers" in str(e.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.flip_p=1.5", "data.flip_p"),
        ("data.global_crops_size=225", "data.global_crops_size"),
        ("data.local_crops_scale=[0.5,0.1]", "data.local_crops_scale"),
        ("optim.lr=-1", "optim.lr"),
        ("ssl.mask_ratio_max=1.2", "ssl.mask_ratio_max"),
    ],
)
def test_invalid_values(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value)


def test_sources_need_name_and_path(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("data:\n  sources:\n    - name: cxr\n")
    with pytest.raises(ConfigError, match=r"data.sources.0.path"):
        load_config(f)
    f.write_text("data:\n  sources:\n    - name: cxr\n      path: x\n      wieght: 2\n")
    with pytest.raises(ConfigError, match=r"did you mean 'data.sources.weight'|data.sources.0.wieght"):
        load_config(f)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=2e-4", "output_dir=" + str(tmp_path / "run")])
    out = save_config(cfg, cfg.output_dir)
    assert out == tmp_path / "run" / "config.yaml"
    again = load_config(out)
    assert to_yaml(again) == to_yaml(cfg)


def test_override_inside_a_list_item():
    cfg = load_config(REPO / "configs/pretrain/vitb14_cxr.yaml", ["data.sources.0.path=/data/shards/mimic"])
    assert cfg.data.sources[0].path == "/data/shards/mimic" and cfg.data.sources[0].name == "cxr"
    cfg = load_config(None, ["data.sources=[{name: a, path: /y, max_samples: 0.5}]"])
    assert cfg.data.sources[0].max_samples == 0.5 and cfg.data.sources[0].weight == 1.0
    # the next free index adds a source, named after its folder unless named too (issue 22)
    cfg = load_config(None, ["data.sources.0.path=/x/cxr"])
    assert [(s.name, s.path) for s in cfg.data.sources] == [("cxr", "/x/cxr")]
    cfg = load_config(None, ["data.sources.0.path=/x/cxr", "data.sources.0.name=mine", "data.sources.1.path=/y"])
    assert [(s.name, s.path) for s in cfg.data.sources] == [("mine", "/x/cxr"), ("y", "/y")]
    # one bare path, and a whole list given without names, replacing the YAML's sources
    assert [(s.name, s.path) for s in load_config(None, ["data.sources=/x/cxr"]).data.sources] == [("cxr", "/x/cxr")]
    cfg = load_config(REPO / "configs/pretrain/vitb14_cxr.yaml", ["data.sources=[{path: /y/us, weight: 2}]"])
    assert [(s.name, s.path, s.weight) for s in cfg.data.sources] == [("us", "/y/us", 2.0)]
    with pytest.raises(ConfigError, match=r"so no data.sources.1: number new ones in order from data.sources.0"):
        load_config(None, ["data.sources.1.path=/x"])  # a gap
