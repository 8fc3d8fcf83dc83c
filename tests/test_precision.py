"""Precision: bf16 autocast on the CPU agrees with fp32; the CUDA paths (autocast, GradScaler) run where a GPU is."""

from __future__ import annotations

import pytest
import torch

from vae_runner.errors import UserError
from vae_runner.model import VAE
from vae_runner.objective import objective_terms
from vae_runner.build import resolve_device, resolve_precision
from vae_runner.train import train_step

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _batch(channels: int = 1, size: int = 28, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_bf16_autocast_on_cpu_is_within_two_percent_of_fp32(arch: str) -> None:
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, arch=arch).eval()
    x, _ = _batch()
    losses = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(1)  # the same eps in the reparameterisation
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
            features = model.features(x)
        losses[dtype] = objective_terms(x, out, model.likelihood)["loss"]
    assert features.dtype == torch.bfloat16  # autocast really ran in bf16 ...
    assert out.x_params.dtype == torch.float32  # ... except in the decoder's output layer
    assert torch.isfinite(losses[torch.bfloat16])
    assert losses[torch.bfloat16].item() == pytest.approx(losses[None].item(), rel=0.02)


def test_auto_precision_is_fp32_on_cpu_and_fp16_refused_there() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="precision=fp16"):
        resolve_precision("fp16", cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_suggests_device_auto() -> None:
    with pytest.raises(UserError, match="device=auto"):
        resolve_device("cuda")


def _bars(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch a model can learn in a few steps: one white bar per image, its height set by the label.

    Uniform noise (as `_batch` draws) is already at its best loss with a decoder
    that outputs 0.5 (784 ln 2 = 543 nats), so no step can lower it.
    """
    y = torch.arange(n) % 10
    x = torch.zeros(n, 1, 28, 28)
    for i, k in enumerate(y.tolist()):
        x[i, 0, 2 + 2 * k : 8 + 2 * k, 4:24] = 1.0
    return x, y


@requires_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_training_steps_lower_the_loss(precision: str) -> None:
    device = torch.device("cuda")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, arch="conv", num_classes=10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    x, y = (t.to(device) for t in _bars())
    steps = [train_step(model, optimizer, scaler, x, y, amp_dtype=dtype) for _ in range(40)]
    losses = [step["loss"].item() for step in steps if step is not None]
    # fp16 skips its first steps while the GradScaler lowers its scale from 2**16; bf16 skips none
    assert len(losses) >= 25 if precision == "fp16" else len(losses) == 40
    assert losses[-1] < 0.6 * losses[0]  # 515 -> 208 nats in 30 fp32 steps on the CPU
    assert (scaler.get_scale() > 1) == (precision == "fp16")


@requires_cuda
def test_auto_precision_on_cuda_uses_a_half_type() -> None:
    assert resolve_precision("auto", torch.device("cuda")) in ("bf16", "fp16")
