"""Shared pytest fixtures.

Tests that need the real LGG data use the ``kaggle_root`` fixture: it skips when the data is absent
on a developer's machine, and fails when ``CI=true`` (CI must always have it).
"""

from __future__ import annotations

import importlib.util
import locale
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KAGGLE_ROOT = REPO_ROOT.parent / "shared" / "data" / "lgg" / "kaggle_3m"


def _require_shared(folder: Path, what: str) -> Path:
    """``folder`` when it holds data; otherwise skip the test, or fail it when ``CI=true``."""
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    message = f"{what} not found at {folder}"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message + " (CI=true: the shared data is required)")
    pytest.skip(message)


def _require_real_data() -> Path:
    return _require_shared(KAGGLE_ROOT, "real LGG data")


@pytest.fixture(scope="session")
def kaggle_root() -> Path:
    """Path to ``../shared/data/lgg/kaggle_3m`` (fails under CI when missing)."""
    return _require_real_data()


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


def prepare_synthetic(root: Path, seed: int = 0) -> Path:
    """Six synthetic patients (64x64, 10-12 slices) written under ``root`` and prepared into NIfTI volumes and
    3 folds; returns the prepared folder."""
    from pipeline.ingestion.prepare import prepare_dataset
    from pipeline.ingestion.synthetic import write_synthetic_kaggle

    write_synthetic_kaggle(root / "kaggle_3m", num_patients=6, seed=seed, size=64, slices=(10, 12))
    prepare_dataset(root / "kaggle_3m", root / "prepared", num_folds=3, seed=0, workers=1)
    return root / "prepared"


EXTERNAL_ROOT = REPO_ROOT.parent / "shared" / "data" / "external"


@pytest.fixture(scope="session")
def external_root() -> Path:
    """Path to ``../shared/data/external`` (the external scans; skips when absent, fails under CI)."""
    return _require_shared(EXTERNAL_ROOT, "external scans")


@pytest.fixture(autouse=True)
def _keep_the_locale():
    """Restore the process locale after each test: SimpleITK's GDCM DICOM writer (the tests' synthetic
    series) switches it to "C", after which Python reads and writes text as ASCII by default."""
    saved = locale.setlocale(locale.LC_ALL, None)
    yield
    locale.setlocale(locale.LC_ALL, saved)
