"""Mixture stream, nested subsets, rank split and augmentation draws: pure functions, no I/O."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dinotrain.config import DataConfig
from dinotrain.data.augment import Col, augment_section, resized_crop_window, sample_params
from dinotrain.data.mixture import MixtureStream, make_source, subset_order, subset_size
from dinotrain.data.shard_index import DataError, SampleRef, parse_idx


def refs(prefix: str, n: int) -> list[SampleRef]:
    return [SampleRef(f"/s/{prefix}-{i // 7:06d}.tar", f"{prefix}{i:05d}", "png", i, 1, -1, 0) for i in range(n)]


def keys_of(batch):
    return [r.key for _, r in batch]


def test_subsets_are_nested_and_seed_fixed():
    all_refs = refs("a", 500)
    s10 = {r.key for r in make_source("a", "/s", 1, all_refs, 0.1, seed=3).refs}
    s30 = {r.key for r in make_source("a", "/s", 1, all_refs, 0.3, seed=3).refs}
    s_all = {r.key for r in make_source("a", "/s", 1, all_refs, None, seed=3).refs}
    assert len(s10) == 50 and len(s30) == 150 and len(s_all) == 500
    assert s10 < s30 < s_all
    # the subset does not depend on the order shards list their samples (a re-sharded corpus)
    shuffled = [all_refs[i] for i in np.random.default_rng(0).permutation(500)]
    assert {r.key for r in make_source("a", "/s", 1, shuffled, 0.1, seed=3).refs} == s10
    # another seed picks another subset
    assert {r.key for r in make_source("a", "/s", 1, all_refs, 0.1, seed=4).refs} != s10
    assert subset_size(500, 120) == 120 and subset_size(500, 0.001) == 1 and subset_size(10, 50) == 10
    assert sorted(subset_order(["x", "y", "z"], 0).tolist()) == [0, 1, 2]


@pytest.mark.parametrize("world_size,batch", [(2, 3), (3, 4)])
def test_ranks_are_disjoint_and_cover_an_epoch_once(world_size, batch):
    src = make_source("a", "/s", 1, refs("a", 60), None, seed=0)  # 9 shards: fewer than ranks x workers
    streams = [MixtureStream([src], batch, world_size, seed=0) for _ in range(world_size)]
    per_rank = [[] for _ in range(world_size)]
    for _ in range(60 // (batch * world_size)):
        for r, st in enumerate(streams):
            per_rank[r] += keys_of(st.next_for_rank(r))
    seen = [k for ks in per_rank for k in ks]
    assert len(seen) == len(set(seen))  # no sample on two ranks, none twice
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not set(per_rank[a]) & set(per_rank[b])
    if 60 % (batch * world_size) == 0:
        assert set(seen) == {r.key for r in src.refs}


def test_epochs_roll_over_with_a_new_order():
    src = make_source("a", "/s", 1, refs("a", 12), None, seed=0)
    st = MixtureStream([src], 4, 1, seed=0)
    e0 = sum((keys_of(st.next_for_rank(0)) for _ in range(3)), [])
    e1 = sum((keys_of(st.next_for_rank(0)) for _ in range(3)), [])
    assert sorted(e0) == sorted(e1) == sorted(r.key for r in src.refs)
    assert e0 != e1
    assert st.epoch == [2] and st.cursor == [0] and st.drawn == [24]


def test_weights_set_the_mixture_and_every_source_cycles_its_own_epochs():
    a = make_source("a", "/s", 3.0, refs("a", 40), None, seed=0)
    b = make_source("b", "/s", 1.0, refs("b", 10), None, seed=0)
    st = MixtureStream([a, b], 8, 1, seed=0)
    drawn = Counter()
    for _ in range(250):
        drawn.update(k[0] for k in keys_of(st.next_for_rank(0)))
    frac_a = drawn["a"] / 2000
    assert abs(frac_a - 0.75) < 0.03
    assert st.drawn == [drawn["a"], drawn["b"]]
    assert st.epoch[1] == drawn["b"] // 10 and st.epoch[0] == drawn["a"] // 40


def test_state_restores_the_same_continuation():
    a = make_source("a", "/s", 1.0, refs("a", 23), None, seed=1)
    b = make_source("b", "/s", 2.0, refs("b", 9), 0.5, seed=1)
    st = MixtureStream([a, b], 5, 2, seed=1)
    for _ in range(7):
        st.next_global()
    saved = st.state
    expected = [keys_of(st.next_for_rank(1)) for _ in range(6)]
    fresh = MixtureStream([a, b], 5, 2, seed=1)
    fresh.load_state(saved)
    assert [keys_of(fresh.next_for_rank(1)) for _ in range(6)] == expected
    with pytest.raises(ValueError, match="data.sources"):
        MixtureStream([a], 5, 2, seed=1).load_state(saved)


def test_resized_crop_window_respects_scale_and_bounds():
    rng = np.random.default_rng(0)
    fracs = []
    for _ in range(500):
        top, left, h, w = resized_crop_window(rng, 300, 400, (0.32, 1.0))
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        fracs.append(h * w / 120000)
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02 or h == 300 or w == 400
    assert 0.3 <= min(fracs) and max(fracs) <= 1.0 and np.mean(fracs) > 0.5  # large draws that do not fit are redrawn


def test_apply_probabilities_are_what_the_config_says():
    # defaults: what dinov2's code ran (blur g1 0.0, g2 0.9, local 0.5; solarise g2 0.2)
    spec = DataConfig(global_crops_number=2, local_crops_number=8)
    rng = np.random.default_rng(0)
    p = np.stack([sample_params(rng, 518, 518, spec) for _ in range(2000)])  # [2000, 10, N_PARAMS]
    assert p[:, 0, Col.BLUR].max() == 0.0
    assert abs(p[:, 1, Col.BLUR].mean() - 0.9) < 0.02
    assert abs(p[:, 1, Col.SOLAR].mean() - 0.2) < 0.025
    assert p[:, 0, Col.SOLAR].max() == 0 and p[:, 2:, Col.SOLAR].max() == 0
    assert abs(p[:, 2:, Col.BLUR].mean() - 0.5) < 0.02
    assert abs(p[:, :, Col.INTENSITY].mean() - 0.8) < 0.02
    assert (p[:, :, Col.BRIGHT][p[:, :, Col.INTENSITY] == 0] == 1).all()  # not applied = identity factors
    flipped = p[:, :, Col.X0] > p[:, :, Col.X1]
    assert abs(flipped.mean() - 0.5) < 0.02
    assert (p[:, :, Col.Y0] < p[:, :, Col.Y1]).all()
    never = DataConfig(blur_p_global1=0.0, flip_p=0.0)
    q = sample_params(np.random.default_rng(0), 100, 100, never)
    assert q[0, Col.BLUR] == 0 and (q[:, Col.X0] < q[:, Col.X1]).all()
    # the paper's labels are one override away
    from dinotrain.config import load_config

    paper = augment_section(load_config(None, ["data.blur_p_global1=1.0", "data.blur_p_global2=0.1"]).data)
    rng = np.random.default_rng(1)
    r = np.stack([sample_params(rng, 200, 200, paper) for _ in range(1000)])
    assert r[:, 0, Col.BLUR].min() == 1.0 and abs(r[:, 1, Col.BLUR].mean() - 0.1) < 0.03


def test_idx_parsing_and_its_errors():
    text = "v1.2 2\npng 512 100 ab12.png json 1024 20 ab12.json\njson 2048 20 cd34.json jpg 3072 300 cd34.jpg\n"
    a, b = parse_idx(text, "/s/x-000000.tar")
    assert (a.key, a.image_ext, a.image_offset, a.image_size, a.meta_offset) == ("ab12", "png", 512, 100, 1024)
    assert (b.key, b.image_ext, b.image_offset, b.meta_offset) == ("cd34", "jpg", 3072, 2048)
    with pytest.raises(DataError, match=r"x-000000.tar: sample 'ef56' has no image \(found: json\)"):
        parse_idx("v1.2 1\njson 512 20 ef56.json\n", "/s/x-000000.tar")
    with pytest.raises(DataError, match="wds2idx"):
        parse_idx("garbage\n", "/s/x.tar")
