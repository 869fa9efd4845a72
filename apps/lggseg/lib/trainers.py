"""The training task: fine-tune the bundle's network on the studies whose final labels are in the datastore.

It runs the bundle's own ``train.json`` through MONAI's ``ConfigWorkflow`` (the same trainer, loss,
optimiser, transforms and validation as ``lggseg train`` and ``monai.bundle run``) with a few overrides:
the data (every study with ``labels/final/<id>``; the same studies validate, so the reported Dice is a
training figure), a small number of epochs, a fine-tuning learning rate, and scratch folders for the
bundle's checkpoints and TensorBoard logs. It starts from the weights inference uses now (the fine-tuned
file when present, else the base model; loaded strictly) and publishes the final weights atomically as
``<model_dir>/model.pt`` (temporary file in that folder, then ``os.replace``): inference keeps serving the
old file until the new one is complete, and reloads on its next request when the file changed.

Every kind of study is trained on with the input the inference uses (:mod:`lib.training_inputs`): a prepared
volume, a FLAIR alone (T1 and T1c take the FLAIR's place) or a folder of the user's scans, on the model's
grid, its label on that grid. A study that cannot be used is skipped with one line in the log and in the
figures (``skipped``); the training fails only when no study is left, naming each one's cause.

MONAI Label runs this task in a separate process (``python -m monailabel.interfaces.utils.app -m train``).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.train import TrainTask

from lib.datastore import CheckedDatastore
from lib.model_files import AppPaths, ModelFileError, load_into, publish_weights, read_weights
from lib.training_inputs import training_inputs
from pipeline.engines import innermost_error
from pipeline.model_files import CONFIG_KEY, MODEL_KEY, MODEL_VERSION_KEY, network_options
from pipeline.safety import atomic_write_text

logger = logging.getLogger(__name__)

STATS_NAME = "train_stats.json"
# request parameters a client may set (Slicer shows config() as the trainer's options)
INT_OPTIONS = ("max_epochs", "volume_repeats", "batch_size", "num_samples", "seed")
FLOAT_OPTIONS = ("learning_rate",)
# request keys MONAI Label acts on itself: a folder it puts on the training process's PYTHONPATH
REFUSED_KEYS = ("bundle_path",)


def refused_train_keys(request: dict[str, Any]) -> list[str]:
    """The keys of a client's training request that MONAI Label would act on unsafely (``bundle_path``)."""
    return [key for key in REFUSED_KEYS if key in request]


NO_LABEL = "no study has a final label yet: submit labels, then train"


def no_study_left(skipped: list[str]) -> str:
    """Why a training has nothing to train on: no final label, or each study's cause (one line)."""
    if not skipped:
        return NO_LABEL
    shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return f"no study could be used for fine-tuning: {shown}"


def _cause(error: BaseException) -> BaseException:
    """What to report of a failed workflow: the deepest error of this project in the chain (it names the
    file, e.g. a study that cannot be read), else the innermost one, never MONAI's wrappers ("Failed to
    instantiate component ...", "applying transform ...")."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    own = [e for e in chain if type(e).__module__.split(".")[0] == "pipeline"]
    return own[-1] if own else innermost_error(error)


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` (JSON answers cannot hold NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class LGGSegTrain(TrainTask):
    """Fine-tune the bundle's network from the current weights on the datastore's final labels.

    Args:
        paths: the bundle and weight files.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        epochs: default number of epochs (request ``max_epochs``).
        learning_rate: default learning rate (request ``learning_rate``).
    """

    def __init__(self, paths: AppPaths, device: str = "auto", epochs: int = 5, learning_rate: float = 1e-4):
        super().__init__("Fine-tune the lggseg bundle's network on the studies with a final label")
        self.paths = paths
        self.device = device
        self.defaults: dict[str, Any] = {"max_epochs": epochs, "learning_rate": learning_rate}

    def config(self) -> dict[str, Any]:
        return dict(self.defaults)

    def stats(self) -> dict[str, Any]:
        """The last fine-tuning's figures (``<model_dir>/train_stats.json``), ``{}`` before the first."""
        try:
            return json.loads((self.paths.model_dir / STATS_NAME).read_text())
        except (OSError, ValueError):
            return {}

    def options(self, request: dict[str, Any]) -> dict[str, Any]:
        """The training options of a request: defaults, then the client's values (checked).

        Raises:
            MONAILabelException: a value that is not a number, or not positive.
        """
        options = dict(self.defaults)
        for key in (*INT_OPTIONS, *FLOAT_OPTIONS):
            if request.get(key) in (None, ""):
                continue
            try:
                value = (int if key in INT_OPTIONS else float)(request[key])
            except (TypeError, ValueError):
                value = -1
            if value <= 0 and key != "seed":
                raise MONAILabelException(
                    MONAILabelError.INVALID_INPUT, f"{key}={request[key]!r}: expected > 0"
                )
            options[key] = value
        return options

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Fine-tune, publish ``<model_dir>/model.pt`` atomically, and return the figures.

        Raises:
            MONAILabelException: no study has a final label or none can be used (each one's cause), no usable
                starting weights, or the bundle's workflow failed (the message names the innermost cause, not
                MONAI's wrapper: MONAI Label's training status shows the last lines of the training
                process's output).
        """
        if not isinstance(datastore, CheckedDatastore):
            raise MONAILabelException(
                MONAILabelError.APP_TRAIN_FAILED,
                f"the lggseg trainer needs the app's datastore, got {type(datastore).__name__}",
            )
        if not datastore.get_labeled_images():
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, NO_LABEL)
        options = self.options(request)
        start_from = self.paths.current_model()
        if start_from is None:
            raise MONAILabelException(
                MONAILabelError.APP_TRAIN_FAILED,
                f"no weights to start from: neither {self.paths.finetuned_model} nor {self.paths.base_model}",
            )
        try:
            checkpoint, _ = read_weights(start_from)  # read once: the options and the weights of one file
        except ModelFileError as error:
            raise MONAILabelException(MONAILabelError.APP_TRAIN_FAILED, str(error)) from error
        # the network the weights belong to (an ensemble is fine-tuned as one network: its averaged output)
        options_of_model = network_options(checkpoint[CONFIG_KEY])
        begin = time.time()
        self.paths.model_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".finetune-", dir=self.paths.model_dir) as scratch:
            inputs = training_inputs(datastore, Path(scratch) / "studies")
            datalist = inputs.datalist
            if not datalist:
                message = no_study_left(inputs.skipped)
                logger.error(message)
                raise MONAILabelException(MONAILabelError.INVALID_INPUT, message)
            epochs = options["max_epochs"]
            override = {
                "bundle_root": str(self.paths.bundle),
                "device": self.device,
                "epochs": epochs,
                "learning_rate": options["learning_rate"],
                "warmup_epochs": 0,
                "val_interval": epochs,  # one validation, after the last epoch
                "splits": {"train": datalist, "val": datalist},
                "ckpt_dir": f"{scratch}/checkpoints",
                "output_dir": f"{scratch}/logs",
                "num_workers": 0,
                **options_of_model,
                **{
                    k: options[k]
                    for k in ("volume_repeats", "batch_size", "num_samples", "seed")
                    if k in options
                },
            }
            try:
                workflow = ConfigWorkflow(
                    config_file=str(self.paths.config_file("train.json")),
                    meta_file=str(self.paths.config_file("metadata.json")),
                    logging_file=False,
                    workflow_type="train",
                    **override,
                )
                workflow.initialize()
                network = workflow.parser.get_parsed_content("network")
                load_into(network, checkpoint, start_from)
                logger.info("fine-tuning %s on %d studies for %d epochs", start_from, len(datalist), epochs)
                workflow.run()
                evaluator = workflow.parser.get_parsed_content("validate#evaluator")
                weights = {k: v.detach().to("cpu") for k, v in network.state_dict().items()}
                workflow.finalize()
            except ModelFileError as error:
                raise MONAILabelException(MONAILabelError.APP_TRAIN_FAILED, str(error)) from error
            except Exception as error:  # noqa: BLE001 - any failure of the bundle's workflow: show its cause
                cause = _cause(error)
                message = f"fine-tuning failed: {type(cause).__name__}: {' '.join(str(cause).split())}"
                logger.error(message)
                raise MONAILabelException(MONAILabelError.APP_TRAIN_FAILED, message) from error
        stats = {
            "model_file": str(self.paths.finetuned_model),
            "started_from": str(start_from),
            "studies": len(datalist),
            "skipped": inputs.skipped,
            "epochs": epochs,
            "learning_rate": options["learning_rate"],
            "train_mean_dice": _number(evaluator.state.metrics.get("val_mean_dice")),
            "seconds": round(time.time() - begin, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        published = {MODEL_KEY: weights, CONFIG_KEY: checkpoint[CONFIG_KEY], "finetune": stats}
        base = checkpoint.get(MODEL_VERSION_KEY)
        if isinstance(base, str) and base:  # other weights than the base model's version: said so
            published[MODEL_VERSION_KEY] = f"{base.split('+')[0]}+finetuned"
        publish_weights(self.paths.finetuned_model, published)
        atomic_write_text(self.paths.model_dir / STATS_NAME, json.dumps(stats, indent=1) + "\n")
        logger.info("published %s (%s)", self.paths.finetuned_model, stats)
        return stats
