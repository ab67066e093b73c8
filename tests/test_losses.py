"""DINOv2's objectives, each checked against an independent re-derivation with explicit loops."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinotrain.losses import dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp, softmax_center, update_center


def _log_softmax_row(row: list[float], temp: float) -> list[float]:
    z = [v / temp for v in row]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def test_softmax_center_and_update_center():
    torch.manual_seed(0)
    t = torch.randn(5, 7, dtype=torch.float64)
    c = torch.randn(1, 7, dtype=torch.float64)
    p = softmax_center(t, c, 0.04)
    for i in range(5):
        e = [math.exp((t[i, k].item() - c[0, k].item()) / 0.04) for k in range(7)]
        for k in range(7):
            assert p[i, k].item() == pytest.approx(e[k] / sum(e), rel=1e-9)
    new = update_center(c, t, momentum=0.9)
    for k in range(7):
        mean_k = sum(t[i, k].item() for i in range(5)) / 5
        assert new[0, k].item() == pytest.approx(0.9 * c[0, k].item() + 0.1 * mean_k, rel=1e-9)
    # leading dims are flattened (iBOT passes [images, patches, K])
    assert torch.allclose(update_center(c, t.reshape(1, 5, 7)), new)


def _sinkhorn_numpy(logits: np.ndarray, temp: float, iters: int) -> np.ndarray:
    """DINOv2's algorithm written out with explicit loops, in float64."""
    B, K = logits.shape
    Q = np.exp(logits.T / temp)
    Q = Q / Q.sum()
    for _ in range(iters):
        for k in range(K):
            Q[k, :] = Q[k, :] / Q[k, :].sum() / K
        for b in range(B):
            Q[:, b] = Q[:, b] / Q[:, b].sum() / B
    return (Q * B).T


def test_sinkhorn_knopp_matches_reference_and_marginals():
    torch.manual_seed(0)
    logits = torch.randn(12, 20) * 0.2
    q = sinkhorn_knopp(logits, temp=0.07, n_iterations=3)
    assert q.dtype == torch.float32 and q.shape == (12, 20)
    ref = _sinkhorn_numpy(logits.double().numpy(), 0.07, 3)
    assert np.allclose(q.numpy(), ref, rtol=1e-4, atol=1e-7)
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)  # each sample: a distribution
    # with enough iterations the prototype marginals are equal: B / K each
    q50 = sinkhorn_knopp(logits, temp=0.07, n_iterations=200)
    assert torch.allclose(q50.sum(dim=0), torch.full((20,), 12 / 20), rtol=1e-3)
    # fp32 whatever the input dtype
    assert sinkhorn_knopp(logits.bfloat16(), 0.07).dtype == torch.float32
    # n_samples is the number of rows (iBOT: masked patches); the default is the batch
    assert torch.allclose(sinkhorn_knopp(logits, 0.07, n_samples=12), q)
    assert torch.allclose(sinkhorn_knopp(logits, 0.07, n_samples=torch.tensor(12)), q)


def test_dino_loss_explicit_loops_known_value_and_gradient():
    torch.manual_seed(0)
    K = 9
    students = [torch.randn(4, K, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    teachers = [torch.softmax(torch.randn(4, K, dtype=torch.float64), -1) for _ in range(2)]
    loss = dino_loss(students, teachers, student_temp=0.1)
    expected = 0.0
    for s in students:
        for t in teachers:
            for b in range(4):
                lsm = _log_softmax_row(s[b].tolist(), 0.1)
                expected -= sum(t[b, k].item() * lsm[k] for k in range(K)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # uniform logits and a uniform teacher: each pair costs log K
    uniform = dino_loss([torch.zeros(3, K)] * 2, [torch.full((3, K), 1 / K)] * 2)
    assert uniform.item() == pytest.approx(4 * math.log(K), rel=1e-6)
    # d loss / d s = sum over teachers of (softmax(s / T) - t) / (T * B)
    loss.backward()
    for s in students:
        p = torch.softmax(s.detach() / 0.1, -1)
        grad = sum((p - t) / (0.1 * 4) for t in teachers)
        assert torch.allclose(s.grad, grad, atol=1e-9)
    # a single tensor is one crop
    assert dino_loss(torch.zeros(2, K), torch.full((2, K), 1 / K)).item() == pytest.approx(math.log(K))


def test_ibot_loss_explicit_loops():
    torch.manual_seed(0)
    K, P = 6, 5
    masks = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    M = int(masks.sum())
    s = torch.randn(M, K, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(M, K, dtype=torch.float64), -1)
    loss = ibot_loss(s, t, masks, student_temp=0.1)
    total, row = 0.0, 0
    for img in range(3):
        n_img = int(masks[img].sum())
        for p in range(P):
            if masks[img, p]:
                lsm = _log_softmax_row(s[row].tolist(), 0.1)
                total += -sum(t[row, k].item() * lsm[k] for k in range(K)) / n_img
                row += 1
    assert loss.item() == pytest.approx(total / 3, rel=1e-6)  # / images, the unmasked one included
    weights = torch.tensor([1 / 3] * 3 + [1.0], dtype=torch.float64)
    assert ibot_loss(s, t, masks, masks_weight=weights).item() == pytest.approx(loss.item(), rel=1e-9)
    # padded token tensors: only the first n_masked rows count
    pad_s = torch.cat([s, torch.randn(3, K, dtype=torch.float64)])
    pad_t = torch.cat([t, torch.softmax(torch.randn(3, K, dtype=torch.float64), -1)])
    assert ibot_loss(pad_s, pad_t, masks, n_masked=M).item() == pytest.approx(loss.item(), rel=1e-9)
    with pytest.raises(ValueError, match="mask weights"):
        ibot_loss(pad_s, pad_t, masks)
    # uniform: every image with masks contributes log K, the mean is over all 3 images
    u = ibot_loss(torch.zeros(M, K), torch.full((M, K), 1 / K), masks)
    assert u.item() == pytest.approx(2 / 3 * math.log(K), rel=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_koleo_explicit_nearest_neighbour():
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    loss = koleo_loss(x)
    xn = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in x.tolist()]
    expected = 0.0
    for i in range(7):
        best, best_j = -2.0, None
        for j in range(7):
            if j != i:
                d = sum(a * b for a, b in zip(xn[i], xn[j]))
                if d > best:
                    best, best_j = d, j
        dist_ij = math.sqrt(sum((a - b + 1e-8) ** 2 for a, b in zip(xn[i], xn[best_j])))
        expected += -math.log(dist_ij + 1e-8) / 7
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # two orthogonal unit vectors: distance sqrt(2)
    assert koleo_loss(torch.eye(2)).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)


def test_koleo_degenerate_batches_give_no_nan():
    one = torch.randn(1, 8, requires_grad=True)
    loss = koleo_loss(one)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(one.grad).all()
    same = torch.ones(4, 8, requires_grad=True)
    loss = koleo_loss(same)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()
    half = torch.randn(6, 8).half().requires_grad_()
    out = koleo_loss(half)
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(half.grad.float()).all()


# ----------------------------------------------------------------------------- distributed
def _worker(rank: int, world: int, port: int, logits: torch.Tensor, center: torch.Tensor, q: mp.Queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        part = logits.chunk(world)[rank]
        sk = sinkhorn_knopp(part, 0.05)  # auto: a process group is initialised
        local_only = sinkhorn_knopp(part, 0.05, distributed=False)
        c = update_center(center, part)
        # numpy, not tensors: torch's queue shares tensor storage through a file descriptor that
        # the parent fetches from this process, which may have exited by then (a flaky failure)
        q.put((rank, sk.numpy(), local_only.numpy(), c.numpy()))
    finally:
        dist.destroy_process_group()


def test_reductions_across_two_processes_equal_one_big_batch():
    from tests.services import free_port

    torch.manual_seed(0)
    logits = torch.randn(10, 16) * 0.3
    center = torch.randn(1, 16)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, logits, center, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r: [torch.from_numpy(a) for a in rest] for r, *rest in (q.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    full = sinkhorn_knopp(logits, 0.05)
    assert torch.allclose(torch.cat([results[0][0], results[1][0]]), full, atol=1e-6)
    assert not torch.allclose(results[0][1], full[:5], atol=1e-4)  # the reduction mattered
    for r in range(2):
        assert torch.allclose(results[r][2], update_center(center, logits), atol=1e-6)
