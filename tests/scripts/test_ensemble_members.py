"""scripts/ensemble_members.py: a fold ensemble taken apart gives back each fold's own model."""

from __future__ import annotations

import pytest
import torch
from ensemble_members import split_members
from helpers import save_untrained_model

from pipeline.model_files import load_checkpoint
from pipeline.workflows.model_selection import combine_models


def test_members_come_back_as_their_folds_models(tmp_path):
    folds = {
        fold: save_untrained_model(tmp_path / "run" / f"fold{fold}" / "best.pt", fold=fold, seed=fold)
        for fold in (0, 2)
    }
    ensemble = tmp_path / "ensemble.pt"
    combine_models([folds[0], folds[2]], ensemble, half=True)
    written = split_members(ensemble, tmp_path / "again", data="data/lgg")
    assert sorted(written) == [0, 2]
    for fold, path in written.items():
        assert path == tmp_path / "again" / f"fold{fold}" / "checkpoints" / "best_model.pt"
        member, original = load_checkpoint(path), load_checkpoint(folds[fold])
        assert member["config"]["members"] == 1 and member["config"]["fold"] == fold
        assert member["config"]["data"] == "data/lgg" and member["config"]["name"] == "again"
        for name, tensor in original["model"].items():
            expected = tensor.half().float() if torch.is_floating_point(tensor) else tensor
            assert torch.equal(member["model"][name], expected), name
    with pytest.raises(SystemExit, match="exists"):  # never over an earlier split
        split_members(ensemble, tmp_path / "again")
    with pytest.raises(SystemExit, match="not an ensemble"):
        split_members(folds[0], tmp_path / "single")
