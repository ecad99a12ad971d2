"""Device and precision from the config; a CUDA request without a GPU is a one-line error."""

import pytest
import torch
from helpers import compose

from feclip.runtime import DeviceError, runtime


def test_cuda_request_without_a_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="device=cuda"):
        runtime(compose("device=cuda"))
    rt = runtime(compose())
    assert rt.device.type == "cpu" and rt.precision == "fp32"


def test_bf16_autocast_on_request():
    rt = runtime(compose("precision=bf16"))
    with rt.autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    with runtime(compose()).autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.cuda
def test_cuda_runtime_autocasts_to_bf16():
    rt = runtime(compose("device=cuda"))
    assert rt.device.type == "cuda" and rt.precision == "bf16"
    with rt.autocast():
        x = torch.ones(4, 4, device="cuda")
        assert (x @ x).dtype == torch.bfloat16
