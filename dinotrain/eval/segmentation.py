"""Segmentation from frozen patch tokens: a linear head (1x1 conv), upsampled, trained briefly.

Each structure gets its own sigmoid channel (structures overlap: clavicles lie over the lungs).
Tokens are standardised with training statistics; the head is trained with Adam on BCE + soft
Dice over minibatches of the training split, the step with the best validation Dice is kept, and Dice per
structure is reported per test image (empty truth and empty prediction count as 1). The floor
is a constant mask: the training mean mask thresholded at 0.5, the same for every image (a
position prior: on aligned radiographs it is strong, and random-init features do not beat it).
"""

from __future__ import annotations

import numpy as np

from dinotrain.eval.threads import one_thread


def dice_per_image(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of boolean masks [N, H, W] -> [N]."""
    p, t = pred.reshape(len(pred), -1), truth.reshape(len(truth), -1)
    inter = (p & t).sum(1).astype(np.float64)
    denom = p.sum(1) + t.sum(1)
    return np.where(denom == 0, 1.0, 2 * inter / np.maximum(denom, 1))


def constant_mask(train_masks: np.ndarray) -> np.ndarray:
    """[S, H, W] boolean: pixels that are inside the structure in most training images."""
    return train_masks.mean(0) >= 0.5


@one_thread
def train_linear_head(train_tokens: np.ndarray, train_masks: np.ndarray, val_tokens: np.ndarray,
                      val_masks: np.ndarray, steps: int = 300, lr: float = 5e-2, batch_size: int = 32,
                      seed: int = 0, device: str = "cpu"):
    """A trained head: call `predict(tokens [N, h, w, D]) -> bool masks [N, S, H, W]`.

    tokens: [N, h, w, D]; masks: bool [N, S, H, W].
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    tok = torch.from_numpy(train_tokens.astype(np.float32))
    mean = tok.mean((0, 1, 2))
    std = tok.std((0, 1, 2)).clamp_min(1e-6)
    n_struct, H, W = train_masks.shape[1:]
    head = torch.nn.Conv2d(tok.shape[-1], n_struct, kernel_size=1).to(device)
    torch.nn.init.normal_(head.weight, std=0.01, generator=g)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr)

    def logits(t: torch.Tensor) -> torch.Tensor:
        x = ((t.to(device).float() - mean.to(device)) / std.to(device)).permute(0, 3, 1, 2)
        return F.interpolate(head(x), size=(H, W), mode="bilinear", align_corners=False)

    @one_thread
    def predict(tokens: np.ndarray) -> np.ndarray:
        outs = []
        with torch.no_grad():
            for s in range(0, len(tokens), 64):
                outs.append((logits(torch.from_numpy(tokens[s:s + 64].astype(np.float32))) > 0).cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, n_struct, H, W), bool)

    y = torch.from_numpy(train_masks.astype(np.float32))
    best_state, best_dice = None, -1.0
    eval_every = max(1, steps // 10)
    for step in range(steps):
        idx = torch.randint(0, len(tok), (min(batch_size, len(tok)),), generator=g)
        z, t = logits(tok[idx]), y[idx].to(device)
        # BCE + soft Dice: Dice keeps small structures (clavicles) from collapsing to background
        p = torch.sigmoid(z)
        soft_dice = (2 * (p * t).sum((2, 3)) + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(z, t) + (1 - soft_dice).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if len(val_tokens) and ((step + 1) % eval_every == 0 or step == steps - 1):
            pv = predict(val_tokens)
            d = float(np.mean([dice_per_image(pv[:, s], val_masks[:, s]).mean() for s in range(n_struct)]))
            if d > best_dice:
                best_dice = d
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    if best_state is not None:
        head.load_state_dict(best_state)
    return predict
