"""Probes, metrics, specs and preprocessing of `dinotrain eval` on constructed features and real data.

No backbone here: features are built so that the right answer is known (separable by
construction, or pure noise), while labels, ages, masks and texts are the real ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dinotrain.eval import metrics
from dinotrain.eval.attributes import mean_baseline, ridge_probe
from dinotrain.eval.features import RAD_DINO_MEAN, RAD_DINO_STD, preprocess, preprocess_mask, resize_crop_box
from dinotrain.eval.knn import knn_scores
from dinotrain.eval.linear import linear_probe
from dinotrain.eval.segmentation import constant_mask, dice_per_image, train_linear_head
from dinotrain.eval.specs import SpecError, builtin_names, load_spec, load_task, spec_from_dict
from dinotrain.eval.tasks import EvalSettings, class_targets, prepare_targets


def separable(n: int, n_classes: int, dim: int = 32, noise: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 3
    y = rng.integers(0, n_classes, n)
    return centers[y] + noise * rng.normal(size=(n, dim)), metrics.one_hot(y, n_classes)


# ----------------------------------------------------------------------------- kNN
def test_knn_weights_follow_dino_formula():
    train = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    Y = metrics.one_hot(np.array([0, 1, 1]), 2)
    test = np.array([[1.0, 0.1]])
    s = knn_scores(train, Y, test, k=2, temperature=0.1)
    q = test[0] / np.linalg.norm(test[0])
    sims = train @ q  # train rows are unit norm
    top = np.argsort(-sims)[:2]
    w = np.exp(sims[top] / 0.1)
    expect1 = w[Y[top, 1] == 1].sum() / w.sum()
    assert s[0, 1] == pytest.approx(expect1, rel=1e-5) and s[0].sum() == pytest.approx(1.0)
    # k larger than the bank is clipped, not an error
    assert knn_scores(train, Y, test, k=50).shape == (1, 2)


def test_knn_separable_vs_noise():
    x, Y = separable(300, 3)
    s = knn_scores(x[:200], Y[:200], x[200:], k=20)
    assert metrics.auroc(Y[200:], s) > 0.99 and metrics.accuracy(Y[200:], s) > 0.95
    noise = np.random.default_rng(1).normal(size=x.shape)
    s = knn_scores(noise[:200], Y[:200], noise[200:], k=20)
    assert 0.3 < metrics.auroc(Y[200:], s) < 0.7


# ----------------------------------------------------------------------------- linear
def test_linear_probe_binary_multiclass_multilabel():
    for n_classes in (2, 4):
        x, Y = separable(240, n_classes, seed=n_classes)
        s, C = linear_probe(x[:120], Y[:120], x[120:160], Y[120:160], x[160:])
        assert metrics.auroc(Y[160:], s) > 0.99, n_classes
        assert C > 0 and s.shape == (80, n_classes)
    # multi-label: label j present when feature j > 0
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16))
    Y = (x[:, :3] > 0).astype(np.float32)
    s, _ = linear_probe(x[:150], Y[:150], x[150:200], Y[150:200], x[200:], multilabel=True)
    assert s.shape == (100, 3) and metrics.auroc(Y[200:], s) > 0.97
    assert metrics.accuracy(Y[200:], s, multilabel=True) > 0.9
    # noise features: no better than chance
    s, _ = linear_probe(x[:150, 3:], Y[:150], x[150:200, 3:], Y[150:200], x[200:, 3:], multilabel=True)
    assert metrics.auroc(Y[200:], s) < 0.7


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_metrics_equal_scikit_learns_ties_included(kind):
    """Our numpy AUROC / average precision / R² / MAE are scikit-learn's definitions: same values on
    scores with many ties (rounded, as a kNN's vote fractions are), on random resamples as the
    bootstrap draws them, float32 scores included."""
    from sklearn.metrics import average_precision_score, mean_absolute_error, r2_score, roc_auc_score

    rng = np.random.default_rng(0)
    for trial in range(30):
        n, k = int(rng.integers(8, 120)), {"binary": 2, "multiclass": 5, "multilabel": 4}[kind]
        if kind == "multilabel":
            Y = (rng.random((n, k)) < 0.3).astype(np.float32)
        else:
            Y = metrics.one_hot(rng.integers(0, k, n), k)
        S = (Y * rng.random() + rng.random((n, k))).astype(np.float32 if trial % 2 else np.float64)
        if trial % 3 == 0:
            S = np.round(S * 4) / 4  # heavy ties
        idx = rng.integers(0, n, n)
        Yi, Si = Y[idx], S[idx]
        Yc, Sc = (Yi[:, 1:], Si[:, 1:]) if kind == "binary" else (Yi, Si)
        cols = [c for c in range(Yc.shape[1]) if 0 < Yc[:, c].sum() < len(Yc)]
        if not cols:
            assert np.isnan(metrics.auroc(Yi, Si))
            continue
        ref_auc = np.mean([roc_auc_score(Yc[:, c], Sc[:, c]) for c in cols])
        ref_ap = np.mean([average_precision_score(Yc[:, c], Sc[:, c]) for c in cols])
        assert metrics.auroc(Yi, Si) == pytest.approx(ref_auc, abs=1e-12)
        assert metrics.auprc(Yi, Si) == pytest.approx(ref_ap, abs=1e-12)
        y, pred = rng.normal(50, 10, n), rng.normal(50, 12, n)
        if trial % 3 == 0:
            pred = y + np.round(rng.normal(0, 3, n))
        reg = metrics.regression_metrics(y, pred)
        assert reg["r2"](idx) == pytest.approx(r2_score(y[idx], pred[idx]), abs=1e-12)
        assert reg["mae"](idx) == pytest.approx(mean_absolute_error(y[idx], pred[idx]), abs=1e-12)
    for constant in (3.0, 0.1):  # 0.1: its float mean is not 0.1, the sum of squares not 0
        assert np.isnan(metrics.regression_metrics(np.full(7, constant), np.arange(7.0))["r2"](np.arange(7)))
    Y, S = metrics.one_hot(np.array([0, 1, 1, 0]), 2), np.array([[0.9, 0.1], [0.5, np.nan], [0.3, 0.7], [0.8, 0.2]])
    assert np.isnan(metrics.auroc(Y, S)) and np.isnan(metrics.auprc(Y, S))  # scikit-learn raised here


def test_macro_metrics_skip_absent_classes_and_bootstrap():
    Y = metrics.one_hot(np.array([0, 0, 1, 1, 0, 1]), 3)  # class 2 never occurs
    S = np.array([[.9, .1, 0], [.8, .2, 0], [.2, .8, 0], [.3, .7, 0], [.6, .4, 0], [.1, .9, 0]])
    assert metrics.auroc(Y, S) == 1.0 and np.isfinite(metrics.auprc(Y, S))
    # 20 patients x 20 images: label and most of the score are per patient, so the images of a
    # patient are not independent and a patient-level bootstrap must give a wider interval
    rng = np.random.default_rng(0)
    groups = np.arange(400) // 20
    y = rng.integers(0, 2, 20)[groups]
    score = y + rng.normal(scale=1.0, size=20)[groups] + rng.normal(scale=0.1, size=400)
    Yb, Sb = metrics.one_hot(y, 2), np.stack([-score, score], 1)
    f = metrics.classification_metrics(Yb, Sb, False)["auroc"]
    v = f(np.arange(400))
    lo, hi = metrics.bootstrap_ci(f, 400, 150, seed=0)
    assert lo < v < hi
    glo, ghi = metrics.bootstrap_ci(f, 400, 150, seed=0, groups=groups)
    assert glo < v < ghi and ghi - glo > 2 * (hi - lo)


# ----------------------------------------------------------------------------- specs on the real folders
def test_builtin_specs_load_and_split_by_patient(test_data):
    names = builtin_names()
    assert {"jsrt_nodule", "jsrt_age", "jsrt_sex", "jsrt_anatomy", "covid_finding", "covid_lungs",
            "covid_notes_alignment", "covid_notes_retrieval", "busi", "brain_mri", "ham10000",
            "pneumoniamnist"} <= set(names)
    for n in names:
        t = load_task(load_spec(n), test_data, max_samples=60)
        assert len(t.keys) == 60 and {"train", "test"} <= set(t.split.tolist()), n
        assert len(set(t.keys)) == 60, n
    full = load_task(load_spec("covid_finding"), test_data)
    assert set(full.column("label")) == {"COVID-19", "other_pneumonia", "No Finding"}
    pid = np.asarray(full.column("patient_id"))
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not set(pid[full.split == a]) & set(pid[full.split == b]), (a, b)
    # stratified: every class reaches the test split
    assert set(np.asarray(full.column("label"))[full.split == "test"]) == {"COVID-19", "other_pneumonia", "No Finding"}
    lungs = load_task(load_spec("covid_lungs"), test_data)
    assert set(lungs.column("modality")) == {"X-ray"} and all(r["mask_paths"] for r in lungs.rows)
    # the npz spec keeps the file's own splits
    pm = load_task(load_spec("pneumoniamnist"), test_data)
    assert (pm.split == "test").sum() == 468 and set(pm.column("label")) == {"normal", "pneumonia"}
    # deterministic subsets
    a = load_task(load_spec("busi"), test_data, max_samples=40)
    b = load_task(load_spec("busi"), test_data, max_samples=40)
    assert a.keys == b.keys and (a.split == b.split).all()


def test_spec_errors_name_the_problem(test_data, tmp_path):
    with pytest.raises(SpecError, match="built-in tasks: .*jsrt_nodule"):
        load_spec("jsrt_nodul")
    with pytest.raises(SpecError, match="unknown key.*'lable'"):
        spec_from_dict({"dataset": "jsrt", "lable": "x"})
    with pytest.raises(SpecError, match="kind 'clasification'"):
        spec_from_dict({"dataset": "jsrt", "kind": "clasification"})
    with pytest.raises(SpecError, match="'nowhere' not found under --data"):
        load_task(spec_from_dict({"dataset": "nowhere"}), test_data)
    with pytest.raises(SpecError, match="column 'scanner'"):
        load_task(spec_from_dict({"dataset": "jsrt", "where": {"scanner": ["x"]}}), test_data)
    y = tmp_path / "mine.yaml"
    y.write_text("dataset: busi_ultrasound\nclasses: [benign, malignant]\nmax_samples: 30\n")
    t = load_task(load_spec(str(y)), test_data)
    assert t.spec.name == "mine" and len(t.keys) == 30 and set(t.column("label")) == {"benign", "malignant"}


# ----------------------------------------------------------------------------- preprocessing
def test_preprocess_matches_rad_dino_recipe(test_data):
    im = Image.open(test_data / "jsrt/images/JPCLN001.png")
    x = preprocess(im, 112)
    assert x.shape == (3, 112, 112) and x.dtype == np.float32
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])
    ref = np.asarray(im.convert("L").resize((112, 112), Image.BICUBIC), dtype=np.float32) / 255
    np.testing.assert_allclose(x[0], (ref - RAD_DINO_MEAN) / RAD_DINO_STD, atol=1e-5)
    # lungs are dark on a radiograph: the centre-left region is darker than the mediastinum
    assert x[0, 40:70, 20:45].mean() < x[0, 40:70, 50:62].mean()
    # non-square: shorter side -> resolution, centred crop
    assert resize_crop_box(300, 200, 100) == ((150, 100), (25, 0, 125, 100))
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    assert preprocess(rgb, 56).shape == (3, 56, 56) and preprocess(rgb, 56, channels=1).shape == (1, 56, 56)
    m = preprocess_mask(Image.open(test_data / "jsrt/masks/heart/JPCLN001.png"), 112, 32)
    assert m.shape == (32, 32) and 0.05 < m.mean() < 0.3


# ----------------------------------------------------------------------------- attributes (real ages)
def test_ridge_age_beats_mean_only_with_signal(test_data):
    task = load_task(load_spec("jsrt_age"), test_data)
    y = prepare_targets(task, EvalSettings()).y
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(y), 48))
    signal = noise.copy()
    signal[:, :4] += (y[:, None] - y.mean()) / y.std() * np.array([2.0, 1.0, -1.5, 0.8])
    tr, va, te = (task.indices(s) for s in ("train", "val", "test"))
    base = np.mean(np.abs(mean_baseline(y[tr], y[va], len(te)) - y[te]))
    pred, chosen = ridge_probe(signal[tr], y[tr], signal[va], y[va], signal[te])
    assert np.mean(np.abs(pred - y[te])) < 0.6 * base and not chosen["mean_predictor"]
    pred, chosen = ridge_probe(noise[tr], y[tr], noise[va], y[va], noise[te])
    assert np.mean(np.abs(pred - y[te])) > 0.9 * base  # noise cannot explain age
    assert chosen["alpha"] is None or chosen["alpha"] >= 100  # and CV picks strong regularisation for it
    assert chosen["chosen_by"] == "cv"


def test_ridge_without_signal_falls_back_to_the_mean(test_data):
    """Features with structure but no age in them (low rank + noise, as frozen CLS features are): the
    penalty chosen by CV with the one-standard-error rule leaves R² at the mean predictor's ~0 for every
    draw. A penalty picked by one 49-image validation split went down to R² -0.12 on these draws (and
    to -0.85 on a real encoder's features in the laptop study)."""
    task = load_task(load_spec("jsrt_age"), test_data)
    y = prepare_targets(task, EvalSettings()).y
    tr, va, te = (task.indices(s) for s in ("train", "val", "test"))
    groups = task.groups[np.concatenate([tr, va])]
    r2 = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(len(y), 8)) @ rng.normal(size=(8, 192)) * 0.5 + rng.normal(size=(len(y), 192)) * 0.2
        pred, _ = ridge_probe(x[tr], y[tr], x[va], y[va], x[te], groups=groups)
        r2.append(1 - np.sum((pred - y[te]) ** 2) / np.sum((y[te] - y[te].mean()) ** 2))
    assert min(r2) > -0.03, r2


def test_age_records_carry_the_chosen_penalty(test_data):
    """The ridge records say which penalty cross-validation chose, and whether that was the mean
    predictor (the grid's infinite penalty): features without age in them end there, and the study's
    report counts those fits."""
    from dinotrain.eval.tasks import evaluate

    task = load_task(load_spec("jsrt_age"), test_data)
    targets = prepare_targets(task, EvalSettings())
    rng = np.random.default_rng(0)
    noise = {"cls": rng.normal(size=(len(targets.y), 32)).astype(np.float32)}
    signal = {"cls": np.c_[targets.y[:, None] + rng.normal(size=(len(targets.y), 1)), noise["cls"][:, 1:]]}
    for feats, mean_predictor in ((noise, True), (signal, False)):
        recs = [r for r in evaluate(task, targets, feats, "m", EvalSettings(bootstrap=20)) if r["kind"] == "ridge"]
        assert {r["metric"] for r in recs} == {"r2", "mae"}
        assert all(r["probe"]["mean_predictor"] is mean_predictor and r["probe"]["chosen_by"] == "cv" for r in recs)
        assert all((r["probe"]["alpha"] is None) is mean_predictor for r in recs)


def test_ridge_path_is_scikit_learns_ridge_for_every_penalty():
    """One SVD per fit serves the whole grid: the predictions equal StandardScaler + Ridge (with its
    intercept) at each finite penalty, a constant column included, and the infinite penalty predicts
    the training mean."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dinotrain.eval.attributes import ALPHA_GRID, ridge_path

    rng = np.random.default_rng(0)
    for n, d in ((40, 300), (200, 16)):  # more dimensions than images, and fewer
        x = rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)) + 0.1 * rng.normal(size=(n, d))
        x[:, 0] = 2.5
        y, xp = rng.normal(50, 10, n), rng.normal(size=(7, d))
        got = ridge_path(x, y, xp, ALPHA_GRID)
        for a, row in zip(ALPHA_GRID[:-1], got):
            ref = make_pipeline(StandardScaler(), Ridge(alpha=a, solver="svd")).fit(x, y).predict(xp)
            np.testing.assert_allclose(row, ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got[-1], y.mean())


def test_ridge_with_too_few_patients_for_folds_says_so():
    from dinotrain.eval.attributes import ALPHA_GRID, choose_alpha

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=12)
    assert choose_alpha(x, y, groups=np.zeros(12)) == (np.inf, "too_few_groups")  # one patient: no CV
    alpha, how = choose_alpha(x, y, groups=np.repeat(np.arange(3), 4))  # 3 patients: 3 folds
    assert how == "cv" and alpha in ALPHA_GRID


def test_cv_folds_keep_a_patients_images_together():
    from dinotrain.eval.attributes import _folds

    groups = np.repeat(np.arange(12), 3)
    folds = _folds(len(groups), groups, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(36))  # every image held out once
    assert all(len(set(groups[f]) & set(groups[g])) == 0 for i, f in enumerate(folds) for g in folds[i + 1:])


def test_class_targets_multilabel_and_sex(test_data):
    t = load_task(spec_from_dict({"dataset": "covid_cxr", "multilabel": True, "label_separator": ",",
                                  "label_column": "labels_all", "max_samples": 80}), test_data)
    Y, classes = class_targets(t)
    assert "COVID-19" in classes and "ARDS" in classes and Y.shape == (80, len(classes))
    assert (Y.sum(1) >= 1).all()
    t = load_task(load_spec("jsrt_sex"), test_data)
    Y, classes = class_targets(t)
    assert classes == ["F", "M"] and Y.sum() == len(t.keys)


# ----------------------------------------------------------------------------- segmentation (real masks)
def test_linear_head_segments_when_tokens_carry_the_mask(test_data):
    task = load_task(load_spec("jsrt_anatomy"), test_data, max_samples=40)
    s = EvalSettings(resolution=112, patch_size=14)
    t = prepare_targets(task, s)
    M = t.masks
    assert M.shape == (40, 3, 32, 32) and t.keep.all()
    # tokens = the mask fraction of each 14 px patch (8x8 grid) + noise channels
    frac = M.reshape(40, 3, 8, 4, 8, 4).mean((3, 5)).transpose(0, 2, 3, 1)
    rng = np.random.default_rng(0)
    tokens = np.concatenate([frac + 0.05 * rng.normal(size=frac.shape), rng.normal(size=(40, 8, 8, 13))], -1)
    tr, va, te = (task.indices(x) for x in ("train", "val", "test"))
    predict = train_linear_head(tokens[tr], M[tr], tokens[va], M[va], steps=100, seed=0)
    pred = predict(tokens[te])
    dice = [dice_per_image(pred[:, k], M[te, k]).mean() for k in range(3)]
    const = constant_mask(M[tr])
    cdice = [dice_per_image(np.broadcast_to(const[k], M[te, k].shape), M[te, k]).mean() for k in range(3)]
    assert dice[0] > 0.9 and dice[1] > 0.8, dice  # lungs, heart
    assert dice[0] > cdice[0] and dice[1] > cdice[1], (dice, cdice)
    # pure noise tokens: the head learns no better than the position-free average
    predict = train_linear_head(tokens[tr][..., 3:], M[tr], tokens[va][..., 3:], M[va], steps=60, seed=0)
    noisy = predict(tokens[te][..., 3:])
    assert dice_per_image(noisy[:, 0], M[te, 0]).mean() < dice[0] - 0.1
    # Dice conventions
    z = np.zeros((1, 4, 4), bool)
    assert dice_per_image(z, z)[0] == 1.0 and dice_per_image(~z, z)[0] == 0.0


def test_ridge_on_more_dimensions_than_images_is_exact_and_quiet():
    """Frozen CLS features (float32, nearly one direction early in training) have more dimensions than
    the age tasks have images: the weakest penalty must still solve exactly (ridge's kernel form on the
    standardised features) and raise no LinAlgWarning (scikit-learn's default Cholesky solve in float32
    did both wrong on the laptop study's features)."""
    import warnings

    from scipy.linalg import LinAlgWarning

    from dinotrain.eval.attributes import ridge_path

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(60, 1)) @ rng.normal(size=(1, 300)) + 0.05 * rng.normal(size=(60, 300))).astype(np.float32)
    y = rng.normal(size=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LinAlgWarning)
        got = ridge_path(x, y, x, [1e-2])[0]
    x = x.astype(np.float64)
    z = (x - x.mean(0)) / x.std(0)
    w = z.T @ np.linalg.solve(z @ z.T + 1e-2 * np.eye(60), y - y.mean())  # kernel form of ridge
    np.testing.assert_allclose(got, z @ w + y.mean(), atol=1e-8)
