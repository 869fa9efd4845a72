"""The fixtures every test folder shares (each folder's own are in its ``conftest.py``; plain functions in
``tests/helpers.py``).

Tests that need the real LGG data use the ``kaggle_root`` fixture: it skips when the data is absent
on a developer's machine, and fails when ``CI=true`` (CI must always have it).
"""

from __future__ import annotations

import importlib.util
import locale
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from helpers import (
    EXTERNAL_ROOT,
    REPO_ROOT,
    prepare_synthetic,
    require_real_data,
    require_shared,
    tiny_config,
)


@pytest.fixture(scope="session")
def kaggle_root() -> Path:
    """Path to ``../shared/data/lgg/kaggle_3m`` (fails under CI when missing)."""
    return require_real_data()


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """Import ``scripts/<name>.py`` as a module (the scripts are not a package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def single_thread():
    """One torch thread for the test (tiny networks gain nothing from more, and lose a lot on a shared,
    busy machine); the former count afterwards. Use with ``pytest.mark.usefixtures("single_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _disks(n: int, size: int, generator):
    """``n`` bright noisy disks of random centre and radius on a noisy background: images ``(n, 3, size,
    size)`` and masks ``(n, 1, size, size)``."""
    import torch

    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=generator) * (size - 24) + 12).tolist()
        r = float(torch.rand(1, generator=generator) * 8 + 5)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).float()
        images.append((mask + 0.3 * torch.randn(size, size, generator=generator)).expand(3, -1, -1))
        masks.append(mask[None])
    return torch.stack(images), torch.stack(masks)


def _dice(logits, target) -> float:
    pred = (logits > 0).float()
    return float((2 * (pred * target).sum() + 1e-6) / (pred.sum() + target.sum() + 1e-6))


@pytest.fixture(scope="session")
def learn_disks() -> Callable[..., tuple[float, float]]:
    """``learn(net, steps)``: train a one-channel network ``steps`` Adam steps (lr 1e-2, BCE + soft Dice)
    on 16 synthetic 64x64 disk images; returns its Dice on 8 held-out images before and after."""
    import torch
    import torch.nn.functional as F

    def learn(net: torch.nn.Module, steps: int) -> tuple[float, float]:
        generator = torch.Generator().manual_seed(0)
        images, masks = _disks(16, 64, generator)
        test_images, test_masks = _disks(8, 64, generator)
        net.eval()
        with torch.no_grad():
            before = _dice(net(test_images), test_masks)
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(steps):
            optimizer.zero_grad()
            logits = net(images)
            prob = torch.sigmoid(logits)
            loss = F.binary_cross_entropy_with_logits(logits, masks)
            loss = loss + 1 - (2 * (prob * masks).sum() + 1) / (prob.sum() + masks.sum() + 1)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            after = _dice(net(test_images), test_masks)
        return before, after

    return learn


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory) -> Path:
    """Six synthetic patients (64x64, 10-12 slices) prepared into NIfTI volumes and 3 folds (one set per test
    module); the prepared folder."""
    return prepare_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0)


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    """An untrained UNeXt with small ``widths`` (:func:`helpers.tiny_config`) saved as ``runs/model.pt``."""
    import torch

    from pipeline.model_files import CONFIG_KEY, MODEL_KEY, create_network, save_model_file

    torch.manual_seed(0)
    config = tiny_config()
    return save_model_file(
        tmp_path / "runs" / "model.pt", {MODEL_KEY: create_network(config).state_dict(), CONFIG_KEY: config}
    )


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test runs in its own folder: relative paths (``train``'s default ``--output runs``) resolve there,
    never in the working tree. Use with ``pytest.mark.usefixtures("in_tmp")``."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def external_root() -> Path:
    """Path to ``../shared/data/external`` (the external scans; skips when absent, fails under CI)."""
    return require_shared(EXTERNAL_ROOT, "external scans")


@pytest.fixture(autouse=True)
def _keep_the_locale():
    """Restore the process locale after each test: SimpleITK's GDCM DICOM writer (the tests' synthetic
    series) switches it to "C", after which Python reads and writes text as ASCII by default."""
    saved = locale.setlocale(locale.LC_ALL, None)
    yield
    locale.setlocale(locale.LC_ALL, saved)
