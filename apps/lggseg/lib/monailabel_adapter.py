"""The one module of the app that uses private names of MONAI Label (0.8.5).

MONAI Label offers no public way to do a few things the app needs: keep its own studies (folder studies) in
the local datastore's table, make the datastore's writes atomic, serialise its reconciliation passes, find
the tasks the app runs, and replace the inference task's non-strict weight loader. Each class or function
below says which private name it relies on and why; every other module of the app uses only this module and
MONAI Label's public API. :data:`PRIVATE_NAMES` lists them all, and ``tests/apps/test_monailabel_adapter.py``
checks that the installed MONAI Label still has each one with the expected signature or type (and that no
other module of the app uses a private name of MONAI Label), so an upgrade that renames one fails there, not
in a user's session.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.infer.basic_infer import BasicInferTask

from pipeline.safety import atomic_write_text

# the private names used here, by the MONAI Label class that defines them: methods (called or overridden)
# and instance attributes (read or written); tests/apps/test_monailabel_adapter.py checks each one
PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "LocalDatastore": (
        "_datastore",  # its table (LocalDatastoreModel): objects, image_path(), label_path(), labels_dir
        "_lock_file",  # the file lock it takes around its table and config file
        "_datastore_config_path",  # datastore_v2.json
        "_config_ts",  # the config file's mtime it last read or wrote (it reloads when the file differs)
        "_ignore_event_config",  # tells its file watcher that the next change of the config file is its own
        "_add_non_existing_images",  # overridden: a reconciliation pass adding new images
        "_remove_non_existing",  # overridden: a reconciliation pass dropping images that are gone
        "_reconcile_datastore",  # overridden: one whole reconciliation (file watcher, refresh())
        "_update_datastore_file",  # overridden: writes the table to datastore_v2.json
    ),
    "MONAILabelApp": ("_infers", "_trainers", "_strategies"),
    "BasicInferTask": ("_get_network",),
}


def new_image_entry(info: dict[str, Any], ext: str) -> ImageLabelModel:
    """A datastore table entry for an image (MONAI Label's public models ``ImageLabelModel``, ``DataModel``).

    Args:
        info: the image's info (``ts``, ``name``, ...).
        ext: its file extension (``""`` for a folder study).

    Returns:
        the entry, without labels.
    """
    return ImageLabelModel(image=DataModel(info=info, ext=ext))


def new_label_entry(info: dict[str, Any], ext: str) -> DataModel:
    """A datastore table entry for a label (``DataModel``).

    Args:
        info: the label's info.
        ext: its file extension.

    Returns:
        the entry.
    """
    return DataModel(info=info, ext=ext)


class LocalDatastoreAdapter(LocalDatastore):
    """``LocalDatastore`` with public access to what the app needs of its private state.

    Relies on (see :data:`PRIVATE_NAMES`):

    - ``_datastore`` (``LocalDatastoreModel``): the table of images and labels. MONAI Label reads and writes
      it only inside its own methods; :attr:`objects`, :meth:`images_folder`, :meth:`label_folder`,
      :meth:`labels_dir_name` and :meth:`has_label` expose it.
    - ``_lock_file``: the inter-process lock around the table (:meth:`table_lock`).
    - ``_add_non_existing_images`` / ``_remove_non_existing``: the reconciliation passes; overridden to call
      :meth:`add_extra_images` / :meth:`remove_invalid_images` after MONAI Label's own pass.
    - ``_reconcile_datastore``: overridden to run one reconciliation at a time (:attr:`reconcile_lock`): the
      file watcher's thread and the requests' ``refresh()`` both reconcile, and MONAI Label's passes iterate
      over the table that another pass changes.
    - ``_update_datastore_file``, ``_datastore_config_path``, ``_config_ts``, ``_ignore_event_config``:
      overridden to write ``datastore_v2.json`` atomically (MONAI Label writes it in place) with the same
      bookkeeping (its file watcher ignores the change; it does not reload its own write).

    Args:
        datastore_path: the studies folder.
        kwargs: as ``LocalDatastore``.
    """

    def __init__(self, datastore_path: str, **kwargs: Any) -> None:
        self.reconcile_lock = threading.RLock()
        super().__init__(datastore_path, **kwargs)

    # ---------------------------------------------------------------------------------------- the table
    @property
    def objects(self) -> dict[str, ImageLabelModel]:
        """The table's entries by image id (the live dict: changes are saved by :meth:`save_table`)."""
        return self._datastore.objects

    def images_folder(self) -> Path:
        """The folder of the image files."""
        return Path(self._datastore.image_path())

    def label_folder(self, tag: str) -> Path:
        """The folder of the labels of ``tag`` (``labels/<tag>``)."""
        return Path(self._datastore.label_path(tag))

    def labels_dir_name(self) -> str:
        """The name of the labels folder in the studies folder (``labels``)."""
        return str(self._datastore.labels_dir)

    def has_label(self, image_id: str, tag: str) -> bool:
        """Whether the table holds a label of ``tag`` for ``image_id``."""
        return self._datastore.label(image_id, tag) is not None

    def table_lock(self) -> FileLock:
        """The file lock MONAI Label takes around the table and its config file."""
        return FileLock(self._lock_file)

    def save_table(self, lock: bool = True) -> None:
        """Write the table to ``datastore_v2.json`` (atomically, :meth:`_update_datastore_file`).

        Args:
            lock: take :meth:`table_lock` (``False`` when the caller holds it).
        """
        self._update_datastore_file(lock=lock)

    # ------------------------------------------------------------------------------ subclass hooks
    def add_extra_images(self) -> int:
        """Called after MONAI Label's pass that adds new image files: add other studies to :attr:`objects`.

        Returns:
            how many entries changed (MONAI Label saves the table when any did).
        """
        return 0

    def remove_invalid_images(self) -> int:
        """Called after MONAI Label's pass that drops images whose file is gone: drop other stale entries.

        Returns:
            how many entries changed.
        """
        return 0

    # ------------------------------------------------------------------ overridden private methods
    def _add_non_existing_images(self) -> int:
        return super()._add_non_existing_images() + self.add_extra_images()

    def _remove_non_existing(self) -> int:
        return super()._remove_non_existing() + self.remove_invalid_images()

    def _reconcile_datastore(self) -> None:
        with self.reconcile_lock:
            super()._reconcile_datastore()

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with self.table_lock():
                write()
        else:
            write()


class AppTasks:
    """Read access to the tasks MONAI Label runs, mixed into the app's ``MONAILabelApp`` subclass
    (``class LGGSegApp(AppTasks, MONAILabelApp)``).

    Relies on ``_infers``, ``_trainers`` and ``_strategies``: the dicts ``MONAILabelApp`` builds from
    ``init_infers()``, ``init_trainers()`` and ``init_strategies()`` (empty when a kind of task is switched
    off in its settings); it has no public accessor for them (``info()`` describes them, as JSON).

    A mixin, not a ``MONAILabelApp`` subclass: MONAI Label finds the app class of ``main.py`` as the first
    class, by name, whose direct base is named ``MONAILabelApp``; the app class must keep that direct base.
    """

    @property
    def infer_tasks(self) -> dict[str, InferTask]:
        """The inference tasks by model name."""
        return self._infers

    @property
    def train_tasks(self) -> dict[str, TrainTask]:
        """The training tasks by model name (empty when MONAI Label's training is switched off)."""
        return self._trainers

    @property
    def strategy_tasks(self) -> dict[str, Strategy]:
        """The active-learning strategies by name."""
        return self._strategies


class InferTaskAdapter(BasicInferTask):
    """``BasicInferTask`` whose network comes from :meth:`network_for`, never from MONAI Label's loader.

    Relies on ``_get_network(device, data)``: ``BasicInferTask``'s own loader (``run_inferer``,
    ``run_detector`` and ``preload`` call it), which loads weights non-strictly by default (a wrong key runs
    a random model with only a warning). Overridden to call :meth:`network_for`.
    """

    def network_for(self, device: Any) -> torch.nn.Module:
        """The network to run on ``device`` (subclasses load it strictly).

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    def _get_network(self, device: Any, data: Any) -> torch.nn.Module:
        return self.network_for(device)
