"""Device and precision from the config; a CUDA request without a GPU is a one-line error."""

import pytest
import torch
from helpers import compose

from feclip.precision import reduced
from feclip.runtime import DeviceError, cached_constants, runtime


def test_cuda_request_without_a_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="device=cuda"):
        runtime(compose("device=cuda"))
    rt = runtime(compose())
    assert rt.device.type == "cpu" and rt.precision == "fp32"


def test_bf16_reduces_the_backbone_only_on_request():
    x = torch.ones(2, 2)
    with runtime(compose("precision=bf16")).policy():
        assert x.matmul(x).dtype == torch.float32
        with reduced("backbone"):
            assert x.matmul(x).dtype == torch.bfloat16
    with runtime(compose()).policy(), reduced("backbone"):
        assert x.matmul(x).dtype == torch.float32


@pytest.mark.cuda
def test_cuda_runtime_reduces_the_backbone_to_bf16():
    rt = runtime(compose("device=cuda"))
    assert rt.device.type == "cuda" and rt.precision == "bf16"
    x = torch.ones(4, 4, device="cuda")
    with rt.policy():
        assert (x @ x).dtype == torch.float32
        with reduced("backbone"):
            assert (x @ x).dtype == torch.bfloat16


def test_cached_constants_are_memoised_and_serve_autograd_after_an_inference_call():
    calls = []

    @cached_constants()
    def ramp(n: int) -> torch.Tensor:
        calls.append(n)
        return torch.arange(n, dtype=torch.float32)

    with torch.inference_mode():
        first = ramp(3)
    x = torch.ones(3, requires_grad=True)
    (x * ramp(3)).sum().backward()  # saving an inference tensor for backward would raise here
    assert ramp(3) is first and calls == [3] and not first.is_inference()
    assert torch.equal(x.grad, torch.arange(3.0))
