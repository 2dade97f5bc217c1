"""Resumable training: ``ckpt_path=last|auto`` resolution, crash-safe checkpoint files, step-keyed training noise."""

from __future__ import annotations

import logging
import os
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from dm4isl.errors import CheckpointError
from dm4isl.io.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

#: ``ckpt_path`` values that mean "this run folder's newest checkpoint": ``last`` requires it, ``auto`` starts
#: fresh when there is none yet (a job that is requeued with the same command line).
RESUME_LAST = "last"
RESUME_AUTO = "auto"
#: File name of the newest checkpoint inside ``<output_dir>/checkpoints`` (Lightning's ``save_last``).
LAST_CKPT = "last.ckpt"
#: Sub-folder of the run folder holding the checkpoints.
CKPT_DIR = "checkpoints"
#: File of the run folder that keeps its W&B run id, and the shape of new ids (W&B's own: 8 of [a-z0-9]).
WANDB_ID_FILE = "wandb_run_id.txt"
WANDB_ID_ALPHABET = string.ascii_lowercase + string.digits
WANDB_ID_LENGTH = 8


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    """The checkpoint folder of a run folder."""
    return Path(output_dir) / CKPT_DIR


def resolve_ckpt_path(ckpt_path: str | os.PathLike | None, output_dir: str | os.PathLike) -> str | None:
    """Map ``ckpt_path`` to a checkpoint file: ``last`` and ``auto`` mean ``<output_dir>/checkpoints/last.ckpt``.

    ``last`` raises :class:`CheckpointError` when that file does not exist; ``auto`` then returns ``None`` (start
    fresh). Any other value is a path that must exist; ``None`` stays ``None``.
    """
    if ckpt_path is None or str(ckpt_path) == "":
        return None
    value = str(ckpt_path)
    if value in (RESUME_LAST, RESUME_AUTO):
        last = checkpoint_dir(output_dir) / LAST_CKPT
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        if value == RESUME_AUTO:
            log.info("ckpt_path=auto: no %s in %s yet; starting a new run", LAST_CKPT, last.parent)
            return None
        raise CheckpointError(
            f"ckpt_path=last: no {LAST_CKPT} in {last.parent}; start without ckpt_path (or with ckpt_path=auto), "
            "or give the run_name of the run to resume"
        )
    if not Path(value).is_file():
        raise CheckpointError(f"ckpt_path={value}: file not found (expected a .ckpt file, 'last' or 'auto')")
    return value


def resume_checkpoint(output_dir: str | os.PathLike, every_n_train_steps: int) -> ModelCheckpoint:
    """A checkpoint callback that rewrites ``last.ckpt`` every ``every_n_train_steps`` optimizer steps (mid-epoch).

    It keeps no other file (``save_top_k=0``): the checkpoint chosen on validation is the other callback's job.
    """
    if every_n_train_steps < 1:
        raise ValueError(f"every_n_train_steps = {every_n_train_steps}; expected ≥ 1")
    return ModelCheckpoint(
        dirpath=checkpoint_dir(output_dir),
        save_top_k=0,
        save_last=True,
        every_n_train_steps=int(every_n_train_steps),
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )


def share_last_checkpoint(callbacks: list[Any]) -> None:
    """Make every ``save_last`` checkpoint callback overwrite the one ``last.ckpt`` (no ``last-v1.ckpt``).

    Several callbacks then write the same file — at validation and every N steps — and it always holds the newest
    state. (ModelCheckpoint's ``enable_version_counter`` constructor argument, set after construction.)
    """
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last:
            cb._enable_version_counter = False


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written to a temporary name and renamed: a process killed mid-write leaves the old file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)




def wandb_run_id(output_dir: str | os.PathLike, write: bool = True) -> str:
    """The W&B run id of a run folder: read from ``<output_dir>/wandb_run_id.txt``, else a new one (written there).

    A resumed run (same ``run_name``) thus logs into the same W&B run. ``write=False`` (processes other than rank
    zero) never writes the file.
    """
    path = Path(output_dir) / WANDB_ID_FILE
    if path.is_file():
        run_id = path.read_text(encoding="utf-8").strip()
        if run_id:
            return run_id
    run_id = "".join(secrets.choice(WANDB_ID_ALPHABET) for _ in range(WANDB_ID_LENGTH))
    if write:
        write_text(path, run_id + "\n")
    return run_id
