"""bf16 inference on the CPU: ``VolumeInferer(cpu_bf16=True)``, switched by the configuration's ``amp``."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import RunConfig
from pipeline.inference import inferers
from pipeline.inference.inferers import VolumeInferer
from pipeline.nets.unext import UNeXt
from pipeline.training.autocast import cpu_bf16_supported
from pipeline.workflows import builders
from pipeline.workflows.builders import make_inferer, network_precision


class _RecordsAutocast(torch.nn.Module):
    """A 1x1 convolution that records whether each call ran under CPU autocast and in which dtype."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 1, 1)
        self.calls: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        self.calls.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out


def _volume() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, 5, generator=torch.Generator().manual_seed(0))


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bf16")
def test_cpu_bf16_runs_the_network_under_bf16_autocast_and_returns_float32() -> None:
    network = _RecordsAutocast()
    prob = VolumeInferer(tta="flip", cpu_bf16=True)(_volume(), network)
    assert network.calls and all(call == (True, torch.bfloat16) for call in network.calls)
    assert prob.dtype == torch.float32 and prob.shape == (1, 1, 32, 32, 5)


def test_without_cpu_bf16_the_network_runs_in_float32() -> None:
    network = _RecordsAutocast()
    prob = VolumeInferer(cpu_bf16=False)(_volume(), network)
    assert network.calls and all(call == (False, torch.float32) for call in network.calls)
    assert prob.dtype == torch.float32


def test_cpu_bf16_falls_back_to_float32_on_a_cpu_without_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr(inferers, "cpu_bf16_supported", lambda: False)
    network = _RecordsAutocast()
    VolumeInferer(cpu_bf16=True)(_volume(), network)
    assert all(call == (False, torch.float32) for call in network.calls)


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bf16")
def test_bf16_probability_of_a_unext_is_close_to_float32() -> None:
    torch.manual_seed(0)
    network = UNeXt(in_channels=9, out_channels=1).eval()
    volume = torch.randn(1, 3, 64, 64, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp32 = VolumeInferer(context=1, divisible=32)(volume, network)
        bf16 = VolumeInferer(context=1, divisible=32, cpu_bf16=True)(volume, network)
    assert bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # it did run in another precision
    difference = (fp32 - bf16).abs()
    assert difference.mean() < 0.005 and difference.max() < 0.2
    assert ((fp32 > 0.5) != (bf16 > 0.5)).float().mean() < 0.01  # under 1% of the voxels change side
    with torch.no_grad():
        again = VolumeInferer(context=1, divisible=32, cpu_bf16=True)(volume, network)
    assert torch.equal(bf16, again)  # reproducible: the same input gives the same probability


@pytest.mark.parametrize("amp", [True, False])
def test_the_configurations_amp_switches_bf16_inference(amp: bool) -> None:
    assert make_inferer(RunConfig(amp=amp)).cpu_bf16 is amp


def test_network_precision_names_what_runs(monkeypatch) -> None:
    assert network_precision(RunConfig(amp=False), "cpu") == "float32"
    assert network_precision(RunConfig(amp=True), "cuda") == "float16 AMP"
    monkeypatch.setattr(builders, "cpu_bf16_supported", lambda: True)
    assert network_precision(RunConfig(amp=True), "cpu") == "bf16 autocast"
    monkeypatch.setattr(builders, "cpu_bf16_supported", lambda: False)
    assert network_precision(RunConfig(amp=True), torch.device("cpu")) == "float32"
