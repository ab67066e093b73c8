"""Forward+backward of the multi-crop student step: one packed list forward vs separate forwards.

`python -m benchmarks.model_step [--quick]`. Each step runs 2 global crops (224) and 8 local
crops (98) per image through a ViT/14 (iBOT masks on the globals), then backpropagates a loss
touching CLS and patch tokens. Baseline: `forward_features` once per crop size (what a
trainer without a list forward does). Candidate: `forward_features_list` (all crops packed in
one sequence; attention grouped per crop size on SDPA). Target: ratio >= 1 (no slower).

Memory: on CPU, PyTorch keeps no allocator statistics, so the figure is the bytes of tensors
saved for backward (distinct storages), which dominates a training step's peak; on CUDA it is
`torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import Timing, cli, ratio_row, result


def _timing(runs: list[float]) -> Timing:
    return Timing(statistics.median(runs), min(runs), statistics.fmean(runs), tuple(runs))


def _inputs(images: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    globals_ = torch.randn(2 * images, 3, 224, 224, generator=g).to(device)
    locals_ = torch.randn(8 * images, 3, 98, 98, generator=g).to(device)
    masks = (torch.rand(2 * images, 256, generator=g) < 0.3).to(device)
    return globals_, locals_, masks


def _loss(outs) -> torch.Tensor:
    return sum(o["x_norm_clstoken"].square().mean() + o["x_norm_patchtokens"].mean() for o in outs)


def _separate(model, g, loc, masks):
    return [model.forward_features(g, masks), model.forward_features(loc)]


def _packed(model, g, loc, masks):
    return model.forward_features_list([g, loc], [masks, None])


def _step(model, fwd, inputs) -> None:
    model.zero_grad(set_to_none=True)
    _loss(fwd(model, *inputs)).backward()
    if inputs[0].is_cuda:
        torch.cuda.synchronize()


def _memory_mb(model, fwd, inputs) -> float:
    """Peak CUDA memory of one step, or on CPU the bytes saved for backward."""
    model.zero_grad(set_to_none=True)
    if inputs[0].is_cuda:
        torch.cuda.reset_peak_memory_stats()
        _step(model, fwd, inputs)
        return torch.cuda.max_memory_allocated() / 2**20
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(fwd(model, *inputs))
    loss.backward()
    return sum(storages.values()) / 2**20


def _check_equal(model, inputs) -> float:
    """Largest difference between the two paths' outputs (they must compute the same thing)."""
    with torch.no_grad():
        a, b = _separate(model, *inputs), _packed(model, *inputs)
    return max((x[k] - y[k]).abs().max().item() for x, y in zip(a, b)
               for k in ("x_norm_clstoken", "x_norm_patchtokens"))


def run(quick: bool = False) -> dict:
    from dinotrain.models import vit_base, vit_small

    device = torch.device("cpu")
    archs = {"vit_small": vit_small} if quick else {"vit_small": vit_small, "vit_base": vit_base}
    images = 1  # 2x224 + 8x98 crops: one image's multi-crop set
    repeat = 2 if quick else 3
    depth = {"depth": 2} if quick else {}  # quick: a 2-block model, seconds on any machine
    rows = []
    for name, make in archs.items():
        torch.manual_seed(0)
        model = make(img_size=224, drop_path_rate=0.0, attn_backend="sdpa", **depth).to(device).train()
        inputs = _inputs(images, device)
        max_diff = _check_equal(model, inputs)
        _step(model, _separate, inputs)  # warm-up both paths
        _step(model, _packed, inputs)
        wall: dict = {_separate: [], _packed: []}
        cpu: dict = {_separate: [], _packed: []}
        for _ in range(repeat):  # alternate, so machine load hits both paths alike
            for fwd in (_separate, _packed):
                t0, c0 = time.perf_counter(), time.process_time()
                _step(model, fwd, inputs)
                wall[fwd].append(time.perf_counter() - t0)
                cpu[fwd].append(time.process_time() - c0)
        crops = f"{images} img = {2 * images}x224 + {8 * images}x98"
        rows.append(ratio_row(f"{name}/14 fwd+bwd, {crops}", _timing(wall[_separate]), _timing(wall[_packed]),
                              baseline_name="separate forwards", candidate_name="list forward",
                              unit="s", max_abs_diff=max_diff))
        # CPU seconds of this process: the work done, less sensitive to other jobs on the machine
        rows.append(ratio_row(f"{name}/14 fwd+bwd CPU time, {crops}", _timing(cpu[_separate]),
                              _timing(cpu[_packed]), baseline_name="separate forwards",
                              candidate_name="list forward", unit="CPU s"))
        mem_sep = _memory_mb(model, _separate, inputs)
        mem_list = _memory_mb(model, _packed, inputs)
        rows.append(ratio_row(f"{name}/14 memory, {crops}", mem_sep, mem_list,
                              baseline_name="separate forwards", candidate_name="list forward",
                              unit="MB (saved for backward)" if device.type == "cpu" else "MB (CUDA peak)"))
        del model
    return result(
        "model_step",
        "multi-crop ViT/14 step: packed list forward vs separate forwards (target ratio >= 1)",
        rows,
        notes="Time ratio = separate / list (> 1: the list forward is faster); wall-clock and this "
              "process's CPU seconds (steadier on a shared machine). Both paths give the same outputs "
              "(max_abs_diff). Memory on CPU = bytes of tensors saved for backward.",
        params={"images": images, "repeat": repeat, "depth": depth.get("depth", "full"), "device": str(device), "threads": torch.get_num_threads(),
                "attn_backend": "sdpa", "mask_ratio": 0.3},
    )


if __name__ == "__main__":
    cli(run)
