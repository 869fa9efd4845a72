"""The bundle's ``inference.json`` writes what ``lggseg infer`` writes per case (issue 18): the mask, the QC
picture, the DICOM SEG of a DICOM FLAIR and ``summary.csv``, through the same handler
(:class:`pipeline.inference.case_outputs_handler.CaseOutputsHandler`)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import png_size, write_dicom_series
from test_bundle import CONFIGS, _literal_scalars, _run_inference

from pipeline.cli import main as lggseg
from pipeline.config import RunConfig
from pipeline.ingestion.kaggle import make_affine
from pipeline.model_files import create_network

QC_PANEL_PX, QC_HEIGHT_PX = 340, 390  # write_qc_png: 3.4 x 3.9 inches per panel at 100 dpi
QC_SLICES = 3


def _model(folder: Path) -> Path:
    """An untrained model file of inference.json's network and post-processing, readable by both the bundle
    (weights under "model") and ``lggseg infer`` (its configuration beside them)."""
    quality = json.loads((CONFIGS / "inference.json").read_text())["quality"]  # a dict: not a scalar
    cfg = RunConfig.from_dict({**_literal_scalars("inference.json"), "quality": quality, "progress": False})
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    path = folder / "model.pt"
    torch.save({"model": create_network(cfg).state_dict(), "config": asdict(cfg)}, path)
    return path


def _head(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A noisy ellipsoid "head" with a bright blob, int16 scanner-like units."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = sum(g**2 for g in grid) < 0.8
    volume = head * (400 + 60 * rng.standard_normal(shape))
    blob = sum((g - 0.2) ** 2 for g in grid[:2]) < 0.06
    volume[blob & head] += 500
    return volume.astype(np.int16)


def _write_cases(root: Path) -> dict[str, str]:
    """Cases of every kind ``infer`` takes; returns their kind by name."""
    full = root / "full"
    full.mkdir(parents=True)
    grid = np.diag([0.9, 0.9, 5.5, 1.0])
    grid[:3, 3] = (-30.0, -20.0, -10.0)
    for seed, name in enumerate(("flair", "t1", "t1c")):
        nib.save(nib.Nifti1Image(_head((56, 64, 7), seed), grid), full / f"full_{name}.nii.gz")
    alone = root / "alone"
    alone.mkdir()
    nib.save(
        nib.Nifti1Image(_head((48, 40, 6), 3), np.diag([1.2, 1.2, 4.0, 1.0])), alone / "alone_flair.nii.gz"
    )
    flair = sitk.GetImageFromArray(_head((5, 48, 44), 4))  # (z, y, x) in SimpleITK's array order
    flair.SetSpacing((1.1, 1.1, 5.0))
    write_dicom_series(flair, root / "dicom" / "flair", "AX FLAIR")
    # prepared-style volumes (H, W, D, 3): on the data set's axes, and on others (the model turns them)
    for name, shape, affine in (
        ("volume", (64, 64, 6), make_affine((0.8, 0.8, 5.0))),
        ("volume_ras", (56, 64, 6), np.diag([0.8, 0.8, 5.0, 1.0])),
    ):
        (root / name).mkdir()
        channels = np.stack([_head(shape, 5 + k) for k in range(3)], axis=-1).astype(np.float32)
        nib.save(nib.Nifti1Image(channels, affine), root / name / "image.nii.gz")
    return {"full": "scans", "alone": "scans", "dicom": "scans", "volume": "volume", "volume_ras": "volume"}


def _expected_qc_size(mask: nib.Nifti1Image) -> tuple[int, int]:
    """write_qc_png's size: one panel per axial slice with tumour, at most three, the middle slice if none."""
    axial = int(np.flatnonzero(nib.orientations.io_orientation(mask.affine)[:, 0] == 2)[0])
    data = np.asarray(mask.dataobj)
    slices = int(np.count_nonzero(np.moveaxis(data, axial, -1).reshape(-1, data.shape[axial]).any(axis=0)))
    return QC_PANEL_PX * max(1, min(QC_SLICES, slices)), QC_HEIGHT_PX


@pytest.mark.slow
def test_bundle_writes_each_cases_qc_dicom_seg_and_summary_as_lggseg_infer(tmp_path):
    scans = tmp_path / "scans"
    kinds = _write_cases(scans)
    model = _model(tmp_path / "bundle" / "models")
    out_bundle, out_cli = tmp_path / "out-bundle", tmp_path / "out-cli"
    result = _run_inference(tmp_path / "bundle", model, scans, out_bundle, tta="none")
    assert result.returncode == 0, result.stderr[-3000:]
    args = ["infer", "--checkpoint", str(model), "--input", str(scans), "--output", str(out_cli)]
    assert lggseg([*args, "--tta", "none", "--device", "cpu"]) == 0

    with open(out_bundle / "summary.csv", newline="") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted(kinds)  # one row per case
    voxels = 0
    for name, kind in kinds.items():
        seg = out_bundle / name / f"{name}_seg.nii.gz"
        mask = nib.load(seg)
        data = np.asarray(mask.dataobj)
        voxels += int(data.sum())
        # the same mask as lggseg infer, byte for byte
        assert seg.read_bytes() == (out_cli / name / f"{name}_seg.nii.gz").read_bytes(), name
        row = rows[name]
        assert row["seg_nifti"] == str(seg) and int(row["tumour_voxels"]) == int(np.count_nonzero(data))
        volume_ml = np.count_nonzero(data) * abs(np.linalg.det(mask.affine[:3, :3])) / 1000.0
        assert float(row["tumour_volume_ml"]) == pytest.approx(volume_ml, abs=1e-4), name
        qc = out_bundle / name / f"{name}_qc.png"
        assert row["qc_png"] == str(qc) and png_size(qc) == _expected_qc_size(mask), name
        assert qc.read_bytes() == (out_cli / name / f"{name}_qc.png").read_bytes(), name
        sequences = {"scans": "flair+t1+t1c" if name == "full" else "flair", "volume": "t1+flair+t1c"}[kind]
        assert row["sequences"] == sequences, name
        if kind == "scans" and name != "full":
            assert row["t1"] == row["t1c"] == "FLAIR (stand-in)"
    assert voxels > 0, "every mask is empty: the volume check would be void"
    import pydicom

    dicom_seg = out_bundle / "dicom" / "dicom_seg.dcm"
    assert rows["dicom"]["seg_dicom"] == str(dicom_seg)
    assert pydicom.dcmread(dicom_seg, stop_before_pixels=True).Modality == "SEG"
    assert not [r for n, r in rows.items() if n != "dicom" and r["seg_dicom"]]
    # the two summaries differ only in the output folder they name
    cli = (out_cli / "summary.csv").read_text().replace(str(out_cli), str(out_bundle))
    assert (out_bundle / "summary.csv").read_text() == cli
    files = {p.relative_to(out_bundle).as_posix() for p in out_bundle.rglob("*") if p.is_file()}
    assert files == {p.relative_to(out_cli).as_posix() for p in out_cli.rglob("*") if p.is_file()}
    assert not [f for f in files if "partial" in f or ".tmp" in f]


def test_qc_of_a_volume_turned_to_the_models_axes(tmp_path):
    """A prepared-style volume not on the data set's axes: the model's input arrives turned (P, L, S), the
    mask on the volume's own grid; the QC picture turns the mask alike (it failed: shapes differ)."""
    from monai.data import MetaTensor

    from pipeline.inference.case_report import write_case_outputs, write_qc_png

    ras = np.diag([0.8, 0.9, 5.0, 1.0])
    mask = np.zeros((30, 40, 5), np.uint8)
    mask[5:12, 20:30, 1:3] = 1
    flair = _head((30, 40, 5), 0).astype(np.float32)
    pls = make_affine((0.9, 0.8, 5.0))
    # the same voxels on the data set's axes (P, L, S): rows from the y axis reversed, columns from x reversed
    turned = lambda a: np.ascontiguousarray(np.flip(np.flip(np.transpose(a, (1, 0, 2)), 0), 1))  # noqa: E731
    image = MetaTensor(torch.from_numpy(np.stack([turned(flair)] * 3)), affine=torch.from_numpy(pls))
    pred = MetaTensor(torch.from_numpy(mask[None]), affine=torch.from_numpy(ras))
    row = write_case_outputs(
        {"case": "v", "image": "v.nii.gz", "kind": "volume"}, pred, tmp_path, image=image
    )
    qc = tmp_path / "v" / "v_qc.png"
    assert row["qc_png"] == str(qc) and png_size(qc) == (2 * QC_PANEL_PX, QC_HEIGHT_PX)
    expected = write_qc_png(turned(flair), turned(mask), tmp_path / "expected.png", affine=pls, title="v")
    assert qc.read_bytes() == expected.read_bytes()
    assert row["tumour_voxels"] == int(mask.sum())
    assert row["tumour_volume_ml"] == pytest.approx(mask.sum() * 0.8 * 0.9 * 5.0 / 1000.0)
