"""scripts/training_progress.py: epochs, best Dice and time-to-quality from a log, resumes counted once."""

from __future__ import annotations

import pytest
from training_progress import main, parse_log, summarise  # scripts/ is on sys.path (pyproject's pythonpath)

LOG = """\
I pipeline.workflows: fold 0: 48 training, 16 validation, 16 test patients
I lggseg.train: epoch 1/4 | loss 11.1 | lr 0.0005 | 100.0 s
I lggseg.train: epoch 2/4 | loss 5.1 | lr 0.001 | val_mean_dice 0.7500 (best 0.7500 @ epoch 2) | 120.0 s
I lggseg.train: epoch 3/4 | loss 2.4 | lr 0.001 | 999.0 s
=== restarted (resume)
I pipeline.workflows: fold 0: 48 training, 16 validation, 16 test patients
I lggseg.train: epoch 3/4 | loss 2.4 | lr 0.001 | 60.0 s
I lggseg.train: epoch 4/4 | loss 1.0 | lr 1e-05 | val_mean_dice 0.8600 (best 0.8600 @ epoch 4) | 80.0 s
I pipeline.workflows: fold 1: 48 training, 16 validation, 16 test patients
I lggseg.train: epoch 1/4 | loss 9.0 | lr 0.0005 | val_mean_dice 0.4000 (best 0.4000 @ epoch 1) | 30.0 s
"""


def test_parse_and_summarise_count_a_resumed_epoch_once():
    folds = parse_log(LOG.splitlines())
    assert sorted(folds) == [0, 1]
    assert folds[0][3] == {"seconds": 60.0, "dice": None}  # the resumed line replaces the interrupted one
    row = summarise(folds[0], [0.7, 0.8, 0.9])
    assert row["epochs"] == 4 and row["best_dice"] == 0.86 and row["best_epoch"] == 4
    assert row["epoch_to_0.7"] == 2 and row["minutes_to_0.7"] == pytest.approx((100 + 120) / 60)
    assert row["epoch_to_0.8"] == 4 and row["minutes_to_0.8"] == pytest.approx((100 + 120 + 60 + 80) / 60)
    assert row["minutes_to_0.9"] is None and row["epoch_to_0.9"] is None
    assert summarise(folds[1], [0.8])["best_dice"] == 0.4


def test_command_prints_each_fold_and_rejects_a_missing_log(tmp_path, capsys):
    log = tmp_path / "cv.log"
    log.write_text(LOG)
    assert main([str(log), "--thresholds", "0.8", "--output", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "fold 0: 4 epochs, best validation Dice 0.8600 @ epoch 4; >= 0.8: epoch 4, 6 min" in out
    assert "fold 1: 1 epochs" in out and (tmp_path / "out.json").is_file()
    assert main([str(tmp_path / "missing.log")]) == 2
