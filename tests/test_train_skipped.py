"""Corrupt samples met by a training run are counted where a user looks (issue 23): `skipped_samples`
(cumulative, summed over ranks) in every metrics.jsonl row and in `dinotrain train`'s final line,
across a resume; not only in the checkpoint. Two processes (torchrun, gloo), as the reference runs.

The shards are a copy of the real JSRT fixture with bytes flipped in the image of chosen samples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dinotrain.config import load_config
from dinotrain.data import build_train_loader
from dinotrain.data.mixture import MixtureStream
from tests.test_train_run import losses_by_step, train, write_config

pytestmark = pytest.mark.slow
STEPS, MORE, RANKS = 4, 6, 2


def corrupt(ref) -> None:
    """Flip 16 bytes in the middle of one sample's image: its PNG no longer decodes."""
    with open(ref.shard, "r+b") as f:
        f.seek(ref.image_offset + ref.image_size // 2)
        chunk = f.read(16)
        f.seek(ref.image_offset + ref.image_size // 2)
        f.write(bytes(255 - c for c in chunk))


def done_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("dinotrain train: done at step")]


def test_skipped_corrupt_samples_reach_metrics_and_the_final_line(cxr_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(cxr_shards, shards)
    cfg = write_config(tmp_path / "cfg.yaml", shards, tmp_path / "run", max_steps=STEPS, checkpoint_every=2,
                       export_every=0)
    # the batches each rank of this two-process run will draw, from the loader's own stream
    loader = build_train_loader(load_config(str(cfg), []), 0, RANKS)
    probes = [MixtureStream(loader.stream.sources, loader.batch_size, RANKS, loader.seed) for _ in range(RANKS)]
    batches = [[[ref for _, ref in probes[r].next_for_rank(r)] for r in range(RANKS)] for _ in range(MORE)]
    victims = {ref.key: ref for ref in (batches[0][0][1], batches[2][1][0], batches[4][0][3])}
    for ref in victims.values():
        corrupt(ref)
    # cumulative skips of all ranks after each step, as the streams say (a victim drawn twice counts twice)
    expected, total = {}, 0
    for n, step in enumerate(batches, start=1):
        total += sum(ref.key in victims for batch in step for ref in batch)
        expected[n] = total
    assert expected[STEPS] >= 2 and expected[MORE] > expected[STEPS]

    res = train(cfg, RANKS)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = losses_by_step(tmp_path / "run")
    # DALI prefetches batches ahead of the step: the count follows the batches handed out, not read
    assert {n: r["skipped_samples"] for n, r in rows.items()} == {n: expected[n] for n in range(1, STEPS + 1)}
    # every rank ends with the same line: the count of all ranks
    assert set(done_lines(res.stderr)) == {
        f"dinotrain train: done at step {STEPS} -> {tmp_path / 'run'}; {expected[STEPS]} corrupt samples skipped and "
        "replaced by others of their batch (`dinotrain shards verify` on the data sources names them)"}

    # resumed from the step-4 checkpoint and run on: the count continues, nothing counted twice
    res = train(cfg, RANKS, f"train.max_steps={MORE}")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = losses_by_step(tmp_path / "run")
    assert {n: r["skipped_samples"] for n, r in rows.items()} == expected
    (line,) = set(done_lines(res.stderr))
    assert line.startswith(f"dinotrain train: done at step {MORE} -> {tmp_path / 'run'}; {expected[MORE]} corrupt ")
    meta = json.loads(Path(tmp_path / "run" / "ckpt" / "step_0000006" / "meta.json").read_text())
    assert meta["step"] == MORE
