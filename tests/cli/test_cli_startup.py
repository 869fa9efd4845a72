"""What ``lggseg`` costs and says before and around the work: a command imports only what it needs
(``lggseg --help`` no deep-learning library), the libraries' noise is silenced (exactly those messages), and
``lggseg networks`` prints each network as soon as it is measured."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings

import pytest

from pipeline.cli import main, network_commands
from pipeline.cli.quiet import silence_library_noise
from pipeline.networks import list_networks

HEAVY = ("torch", "monai", "ignite", "matplotlib", "highdicom", "SimpleITK", "nibabel", "numpy", "tqdm")


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv", [["--help"], ["prepare", "--help"], ["studies", "--help"], ["networks", "-h"]]
)
def test_help_imports_no_heavy_module(argv):
    code = (
        "import sys\nfrom pipeline.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: lggseg" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_segmenting_a_nifti_case_never_imports_highdicom(tmp_path):
    """highdicom (and pydicom's code dictionaries, about 0.3 s) are imported only to write a DICOM SEG."""
    code = (
        "import sys\nimport numpy as np, nibabel as nib, torch\n"
        "from monai.data import MetaTensor\n"
        "from pipeline.inference.case_report import write_case_outputs\n"
        f"out = {str(tmp_path)!r}\n"
        "pred = MetaTensor(torch.zeros(1, 8, 8, 3), affine=torch.eye(4))\n"
        "case = {'case': 'c', 'image': out + '/c.nii.gz', 'kind': 'volume'}\n"
        "write_case_outputs(case, pred, out)\n"
        "print([m for m in ('highdicom', 'pipeline.inference.dicom_seg') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_training_options_are_there_when_a_command_is_used(capsys):
    """The options described by heavy modules are added to the command that is parsed (or shown)."""
    with pytest.raises(SystemExit):
        main(["cv", "--help"])
    assert "--epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_exactly_the_library_noise_is_silenced(caplog):
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        silence_library_noise()
        silence_library_noise()  # twice changes nothing
        warnings.warn(
            "Setting affine, but the applied meta contains an affine. This will be overwritten.", stacklevel=1
        )
        warnings.warn(
            "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully. x",
            stacklevel=1,
        )
        warnings.warn("Setting affine of something else", stacklevel=1)
        warnings.warn("a warning of the pipeline", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == [
        "Setting affine of something else",
        "a warning of the pipeline",
    ]
    caplog.set_level(logging.INFO)
    plugin = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    plugin.warning("nvImageCodec is not available; skipping pydicom decoder plugin registration.")
    plugin.warning("another message of that logger")
    logging.getLogger("monai.data").warning("nvImageCodec is not available; on another logger")
    report = logging.getLogger("pipeline.evaluation.report")
    report.info("report: 2 patients -> %s", "/x/fold0/.evaluation.lggseg-staging-9993-06a5c963")
    report.info("report: 80 patients -> %s", "/x/cv")
    assert [r.getMessage() for r in caplog.records] == [
        "another message of that logger",
        "nvImageCodec is not available; on another logger",
        "report: 80 patients -> /x/cv",
    ]


def test_networks_prints_each_row_as_soon_as_it_is_measured(monkeypatch, capsys):
    seen_before: list[str] = []

    def record(info, in_channels=3, out_channels=1, gmacs=True):
        seen_before.append(capsys.readouterr().out)  # what was printed before this network was built
        return measured(info, in_channels, out_channels, gmacs)

    def measured(info, in_channels=3, out_channels=1, gmacs=True):
        return {
            "name": info.name,
            "spatial_dims": list(info.spatial_dims),
            "parameters": 1_000_000,
            "gmacs": 1.5 if gmacs else None,
            "input": "256x256",
            "deep_supervision": info.deep_supervision,
            "stride": info.stride,
            "source": info.source,
            "description": info.description,
        }

    monkeypatch.setattr(network_commands, "describe_network", record)
    assert main(["networks"]) == 0
    rest = capsys.readouterr().out
    assert seen_before[0].startswith("name ") and seen_before[0].count("\n") == 1  # the header first
    assert all(chunk.count("\n") == 1 for chunk in seen_before[1:])  # then one row per network measured
    rows = [*seen_before[1:], rest]
    assert [r.split()[0] for r in rows] == [info.name for info in list_networks()]
    # --json: one progress line per network on stderr, then the JSON
    monkeypatch.setattr(network_commands, "describe_network", measured)
    assert main(["networks", "--json", "--no-gmacs"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == len(rows)
    assert captured.err.count("networks: measuring ") == len(rows)
