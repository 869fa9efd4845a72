"""MONAI Label app: the private names of MONAI Label it relies on live in one module, and are still there.

``apps/lggseg/lib/monailabel_adapter.py`` is the only module of the app that uses private names of MONAI
Label (its ``PRIVATE_NAMES``). These tests fail when an upgrade of MONAI Label removes, renames or changes one
of them (each must exist with the signature or type the adapter expects, and MONAI Label must still call the
methods the adapter overrides), and when another module of the app starts using one, or defines a name that
shadows one.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import APP_DIR, app_on_path, require_monailabel

APP_MODULES = sorted(p for p in APP_DIR.rglob("*.py") if "__pycache__" not in p.parts)
ADAPTER = APP_DIR / "lib" / "monailabel_adapter.py"


@pytest.fixture(scope="module")
def adapter():
    """The app's ``lib.monailabel_adapter`` module (MONAI Label required)."""
    require_monailabel()
    with app_on_path():
        import lib.monailabel_adapter

        yield lib.monailabel_adapter


def _classes():
    from monailabel.datastore.local import LocalDatastore
    from monailabel.interfaces.app import MONAILabelApp
    from monailabel.tasks.infer.basic_infer import BasicInferTask

    return {
        "LocalDatastore": LocalDatastore,
        "MONAILabelApp": MONAILabelApp,
        "BasicInferTask": BasicInferTask,
    }


def _parameters(function) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_private_methods_keep_their_signatures(adapter) -> None:
    classes = _classes()
    methods = {
        ("LocalDatastore", "_add_non_existing_images"): [("self", inspect.Parameter.empty)],
        ("LocalDatastore", "_remove_non_existing"): [("self", inspect.Parameter.empty)],
        ("LocalDatastore", "_reconcile_datastore"): [("self", inspect.Parameter.empty)],
        ("LocalDatastore", "_update_datastore_file"): [("self", inspect.Parameter.empty), ("lock", True)],
        ("BasicInferTask", "_get_network"): [
            ("self", inspect.Parameter.empty),
            ("device", inspect.Parameter.empty),
            ("data", inspect.Parameter.empty),
        ],
    }
    declared = {(cls, name) for cls, names in adapter.PRIVATE_NAMES.items() for name in names}
    assert set(methods) <= declared
    for (cls, name), expected in methods.items():
        function = getattr(classes[cls], name, None)
        assert callable(function), f"MONAI Label's {cls}.{name} is gone"
        assert _parameters(function) == expected, f"{cls}.{name}{inspect.signature(function)} changed"


def test_the_local_datastore_state_the_adapter_reads(adapter, tmp_path: Path) -> None:
    from filelock import FileLock
    from monailabel.datastore.local import LocalDatastore, LocalDatastoreModel

    store = LocalDatastore(str(tmp_path), extensions=("*.nii.gz", "*.nii"))
    names = set(adapter.PRIVATE_NAMES["LocalDatastore"])
    attributes = {"_datastore", "_lock_file", "_datastore_config_path", "_config_ts", "_ignore_event_config"}
    assert attributes <= names and attributes <= set(vars(store))
    table = store._datastore
    assert isinstance(table, LocalDatastoreModel) and isinstance(table.objects, dict)
    assert (
        Path(table.image_path()) == tmp_path
        and Path(table.label_path("final")) == tmp_path / "labels" / "final"
    )
    assert table.labels_dir == "labels" and table.label("nobody", "final") is None
    assert isinstance(table.model_dump(exclude={"base_path"}), dict)
    assert store._datastore_config_path == os.path.join(str(tmp_path), "datastore_v2.json")
    with FileLock(store._lock_file):
        pass
    assert isinstance(store._config_ts, int | float) and isinstance(store._ignore_event_config, bool)


def test_the_local_datastore_still_calls_the_overridden_hooks(adapter, tmp_path: Path) -> None:
    """``refresh()`` runs both reconciliation passes; MONAI Label's own writes (``update_image_info``) go
    through ``_update_datastore_file`` (so they are atomic), with the bookkeeping of its file watcher."""
    import nibabel as nib
    import numpy as np

    calls: list[str] = []

    class Counting(adapter.LocalDatastoreAdapter):
        def add_extra_images(self) -> int:
            calls.append("add")
            return 0

        def remove_invalid_images(self) -> int:
            calls.append("remove")
            return 0

        def save_table(self, lock: bool = True) -> None:
            calls.append("save")
            super().save_table(lock)

        def _update_datastore_file(self, lock: bool = True) -> None:
            calls.append("write")
            super()._update_datastore_file(lock)

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "a.nii.gz")
    store = Counting(str(tmp_path), extensions=("*.nii.gz", "*.nii"))
    assert {"add", "remove"} <= set(calls) and store.objects["a"].image.ext == ".nii.gz"
    calls.clear()
    store.refresh()
    assert "add" in calls and "remove" in calls
    calls.clear()
    store.update_image_info("a", {"seen": 1})
    assert calls == ["write"]
    written = json.loads((tmp_path / "datastore_v2.json").read_text())
    assert written["objects"]["a"]["image"]["info"]["seen"] == 1
    assert store._ignore_event_config is True  # its file watcher ignores the change it made itself
    assert store._config_ts == os.stat(tmp_path / "datastore_v2.json").st_mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".datastore_v2")], "no temporary left"
    assert store.images_folder() == tmp_path and store.labels_dir_name() == "labels"
    assert not store.has_label("a", "final")


def test_the_app_task_dicts(adapter, tmp_path: Path) -> None:
    from monailabel.tasks.activelearning.first import First

    names = set(adapter.PRIVATE_NAMES["MONAILabelApp"])
    assert names == {"_infers", "_trainers", "_strategies"}
    strategy = First()

    from monailabel.interfaces.app import MONAILabelApp

    class App(adapter.AppTasks, MONAILabelApp):
        def init_infers(self):
            return {"m": "task"}

        def init_strategies(self):
            return {"first": strategy}

    (tmp_path / "studies").mkdir()
    app = App(str(tmp_path), str(tmp_path / "studies"), {})
    assert names <= set(vars(app))
    assert app.infer_tasks == {"m": "task"} and app.strategy_tasks == {"first": strategy}
    assert isinstance(app.train_tasks, dict)


@pytest.mark.slow
def test_monailabel_finds_the_app_class(adapter) -> None:
    """MONAI Label loads ``main.py`` and takes the first class whose direct base is named ``MONAILabelApp``:
    the app's, not a helper imported there (a subprocess: the loader reloads the app's ``lib``)."""
    code = (
        "from monailabel.utils.others.class_utils import get_class_of_subclass, module_from_file\n"
        f"module = module_from_file('main', {str(APP_DIR / 'main.py')!r})\n"
        "print(get_class_of_subclass(module, 'MONAILabelApp').__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "LGGSegApp", done.stderr[-3000:]


def test_basic_infer_task_still_gets_its_network_through_get_network(adapter) -> None:
    """``BasicInferTask.run_inferer`` asks ``_get_network``: the adapter's strict network is what runs."""
    from monai.inferers import SimpleInferer

    asked: list[object] = []

    class Task(adapter.InferTaskAdapter):
        def pre_transforms(self, data=None):
            return []

        def post_transforms(self, data=None):
            return []

        def inferer(self, data=None):
            return SimpleInferer()

        def network_for(self, device):
            asked.append(device)
            return torch.nn.Identity()

    task = Task(path=None, network=None, type="segmentation", labels=None, dimension=3, description="x")
    data = task.run_inferer({"image": torch.ones(1, 2, 2, 2)}, device="cpu")
    assert asked == ["cpu"] and torch.equal(data["pred"], torch.ones(1, 2, 2, 2))


def _monailabel_private_names(tmp_path: Path) -> set[str]:
    """Every private name of the MONAI Label classes the app derives from: class attributes and the
    instance attributes of a fresh instance."""
    from monailabel.interfaces.app import MONAILabelApp
    from monailabel.interfaces.datastore import Datastore
    from monailabel.interfaces.tasks.infer_v2 import InferTask
    from monailabel.interfaces.tasks.strategy import Strategy
    from monailabel.interfaces.tasks.train import TrainTask

    classes = [*_classes().values(), MONAILabelApp, Datastore, InferTask, TrainTask, Strategy]
    names = {n for cls in classes for n in dir(cls) if n.startswith("_") and not n.startswith("__")}
    from monailabel.datastore.local import LocalDatastore

    names |= set(vars(LocalDatastore(str(tmp_path), extensions=("*.nii.gz",))))
    (tmp_path / "app").mkdir()
    names |= set(vars(MONAILabelApp(str(tmp_path / "app"), str(tmp_path), {})))
    from monailabel.tasks.infer.basic_infer import BasicInferTask

    class Task(BasicInferTask):
        def pre_transforms(self, data=None):
            return []

        def post_transforms(self, data=None):
            return []

    names |= set(
        vars(Task(path=None, network=None, type="segmentation", labels=None, dimension=3, description=""))
    )
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_other_module_uses_a_private_name_of_monailabel(adapter, tmp_path: Path) -> None:
    private = _monailabel_private_names(tmp_path)
    assert {n for names in adapter.PRIVATE_NAMES.values() for n in names} <= private
    found = []
    for path in APP_MODULES:
        if path == ADAPTER:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                found.append(f"{path.relative_to(APP_DIR)}:{node.lineno}: uses {node.attr}")
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in private:
                        found.append(f"{path.relative_to(APP_DIR)}:{item.lineno}: overrides {item.name}")
    assert not found, "MONAI Label private names outside lib/monailabel_adapter.py:\n" + "\n".join(found)
