"""The one check -> stage -> claim -> move sequence by which every command writes a folder of results."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from pipeline.safety.guard import UnsafeOutputError, check_output_location
from pipeline.safety.manifest import (
    MANIFEST_FILENAME,
    foreign_files,
    owned_files,
    remove_owned,
    write_manifest,
)
from pipeline.safety.staging import STAGING_MARKER, staging_folder

__all__ = ["OutputTransaction"]


class OutputTransaction:
    """How every command writes a folder of results: check -> stage -> claim -> move.

    1. :meth:`check` (before any work): the location (:func:`check_output_location`) and the contents: a
       folder holding results of an earlier run, or files lggseg did not write, is refused without
       ``overwrite``; a file lggseg did not write under a name the command would write is refused always.
    2. :meth:`staging`: a staging folder beside the output (:func:`staging_folder`) to write into.
    3. :meth:`commit`: the names are claimed in the manifest, checked again (a file that appeared meanwhile
       is kept), then the files are renamed into place; a new output folder is the staging folder renamed.
       Files written this way by an earlier run and not written again are removed unless ``keep_earlier``.
    Commands that write single files in place (``export-kaggle``) use :meth:`check`, :meth:`claim` and
    :func:`atomic_path` instead of a staging folder.

    Args:
        output_dir: the output folder (need not exist).
        command: the command's name, recorded in the manifest.
        overwrite: the user's ``--overwrite``.
        inputs: the paths the command reads (the output may not be, contain or lie inside one).
        error: the exception class of refusals about the contents (called with the one-line message).
        results: how the message names an earlier run's files (``"results"``, ``"studies lggseg wrote"``).
        noun: how the message names the files (``"files"``, ``"mask files"``).
        foreign_needs_overwrite: refuse a folder holding other files without ``overwrite``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        command: str,
        overwrite: bool = False,
        inputs: Iterable[str | os.PathLike] = (),
        error: type[Exception] = ValueError,
        results: str = "results",
        noun: str = "files",
        foreign_needs_overwrite: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.command = command
        self.overwrite = overwrite
        self.inputs = list(inputs)
        self.error = error
        self.results = results
        self.noun = noun
        self.foreign_needs_overwrite = foreign_needs_overwrite

    def clashes(self, planned: Iterable[str]) -> list[str]:
        """Planned names held by something lggseg did not write (a file, a folder, a link in the way)."""
        out, owned, found = self.output_dir, owned_files(self.output_dir), []
        for rel in planned:
            target = out / rel
            parent = target.parent
            if parent != out and (parent.is_symlink() or (parent.exists() and not parent.is_dir())):
                found.append(parent.relative_to(out).as_posix())
            elif (target.exists() or target.is_symlink()) and (rel not in owned or target.is_dir()):
                found.append(rel)
        return sorted(set(found))

    def _refuse_clashes(self, planned: Iterable[str], during: bool = False) -> None:
        clashes = self.clashes(planned)
        if not clashes:
            return
        example = self.output_dir / clashes[0]
        if during:
            raise self.error(
                f"{example}: appeared during the run and lggseg did not write it; nothing was replaced: "
                "move it away and run again"
            )
        raise self.error(
            f"{self.output_dir}: holds {len(clashes)} {self.noun} lggseg did not write under names it would "
            f"write (e.g. {example}); they are never replaced (a file lggseg did not write is never "
            "overwritten, even with --overwrite): move them away or choose another folder"
        )

    def check(self, planned: Sequence[str], earlier: Sequence[str] | None = None) -> Path:
        """Check the output before any work (see the class docstring).

        Args:
            planned: every file the command may write, relative (posix).
            earlier: the earlier run's files that count as results (default: every file the manifest lists
                that exists).

        Returns:
            the output folder, resolved.
        """
        out = check_output_location(self.output_dir, self.inputs)
        if out.is_dir() and any(out.iterdir()):
            owned = owned_files(out)
            existing = [rel for rel in (owned if earlier is None else earlier) if (out / rel).exists()]
            foreign = foreign_files(out) if self.foreign_needs_overwrite else []
            if existing and not self.overwrite:
                raise self.error(
                    f"{out}: already holds {self.results}; pass --overwrite to replace them "
                    "(files lggseg did not write are kept)"
                )
            if foreign and not self.overwrite:
                raise self.error(
                    f"{out}: output folder is not empty and holds {len(foreign)} files lggseg did not write "
                    f"(e.g. {foreign[0]}); choose a new or empty folder, or pass --overwrite to write beside "
                    "them (they are kept)"
                )
            self._refuse_clashes(planned)
        return out

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """The staging folder to write into (removed at the end, whatever happens)."""
        with contextlib.ExitStack() as stack:
            try:
                staging = stack.enter_context(staging_folder(self.output_dir))
            except OSError as error:
                raise UnsafeOutputError(
                    self.output_dir.parent,
                    f"cannot create a staging folder here ({error.strerror or error})",
                    "choose another output folder or fix the permissions",
                ) from None
            yield staging

    def claim(self, written: Iterable[str]) -> None:
        """Record ``written`` in the output's manifest before the files are moved or written into place."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(self.output_dir, written, command=self.command)

    def commit(self, staging: Path, written: Sequence[str], keep_earlier: bool = False) -> None:
        """Move the finished files from ``staging`` into the output, touching only lggseg's own files.

        Args:
            staging: the folder of :meth:`staging`.
            written: the files to move, relative (posix), in the order to move them (the datalist last).
            keep_earlier: keep files an earlier run wrote and this one did not write again.
        """
        out = self.output_dir
        if not out.exists():
            leftovers = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
            for rel in leftovers - {*written, STAGING_MARKER}:  # pieces of failed cases
                (staging / rel).unlink()
            write_manifest(staging, written, command=self.command, replace=True)
            (staging / STAGING_MARKER).unlink()
            try:
                os.replace(staging, out)
                return
            except OSError:
                if not out.is_dir():  # created meanwhile: fall through to the careful path
                    raise
                (staging / MANIFEST_FILENAME).unlink()
        owned = owned_files(out)
        self._refuse_clashes(written, during=True)
        self.claim(written)
        for rel in written:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
        if not keep_earlier:
            remove_owned(out, owned - set(written))
            write_manifest(out, written, command=self.command, replace=True)
