"""Dataclasses that mirror a config section must default to the schema's values (one source of truth)."""

from __future__ import annotations

import dataclasses

from dinotrain.config import EvalConfig, schema
from dinotrain.data.augment import AugmentSpec
from dinotrain.eval.tasks import EvalSettings


def test_augment_spec_defaults_are_the_schema_defaults():
    assert AugmentSpec() == AugmentSpec.from_config(schema().data)


def test_eval_settings_defaults_are_the_schema_defaults():
    cfg = EvalConfig()
    shared = [f.name for f in dataclasses.fields(EvalSettings) if hasattr(cfg, f.name)]
    assert len(shared) >= 8
    settings = EvalSettings()
    assert {k: getattr(settings, k) for k in shared if k != "device"} == {
        k: getattr(cfg, k) for k in shared if k != "device"
    }
