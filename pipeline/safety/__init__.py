"""Never lose a user's data: atomic writes, the output guard, the manifest of written files, staging folders.

The project rule: **no command deletes or overwrites a file it did not write.** This package is the one home
of the pieces every command uses to keep it (it imports only :mod:`pipeline.errors`), one module each:

- atomic writes: :func:`atomic_write_text`, :func:`atomic_write_bytes` and :func:`atomic_path` (a temporary
  sibling renamed into place on success, removed on failure), so a crash never leaves a half-written file
  under the final name;
- the output guard: :func:`check_output_location` refuses an output that equals, contains or lies inside
  an input, that is a file, or whose folder cannot be written, before any long work starts; it raises
  :class:`UnsafeOutputError`, whose message is one line ``<path>: <problem>; <what to do>``;
- the manifest ``<folder>/.lggseg-manifest.json``: the relative paths a command wrote into a folder
  (:func:`write_manifest`, :func:`read_manifest`, :func:`owned_files`, :func:`foreign_files`); only those
  files may later be replaced or removed (:func:`remove_owned`), everything else is left alone;
- staging folders ``.<name>.lggseg-staging-<pid>-<random>`` beside an output, holding a marker file with
  the creating process id: :func:`staging_folder` makes one (removing it at the end) and
  :func:`remove_stale_staging` removes those left by a killed run (their process is gone). Only folders
  with the name pattern *and* the marker are ever removed.

Commands put these together through :class:`OutputTransaction` (check -> stage -> claim -> move), the
one home of that sequence::

    transaction = OutputTransaction(args.output, "prepare", args.overwrite, inputs=[args.input])
    transaction.check(planned)                                 # before any work
    with transaction.staging() as staging:                     # cleans up stale staging folders first
        ...write into staging...
        transaction.commit(staging, written)                   # claim, re-check, rename into place
"""

from __future__ import annotations

from pipeline.safety.atomic import (
    NoSpaceLeftError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_temporary,
    no_space_left,
    partial_postfix,
    remove_stale_temporaries,
    temporary_name,
)
from pipeline.safety.guard import UnsafeOutputError, check_output_file, check_output_location
from pipeline.safety.manifest import (
    MANIFEST_FILENAME,
    foreign_files,
    owned_files,
    read_manifest,
    remove_owned,
    write_manifest,
)
from pipeline.safety.paths import is_inside
from pipeline.safety.processes import process_alive
from pipeline.safety.staging import STAGING_MARKER, remove_stale_staging, staging_folder
from pipeline.safety.transaction import OutputTransaction

__all__ = [
    "MANIFEST_FILENAME",
    "STAGING_MARKER",
    "OutputTransaction",
    "NoSpaceLeftError",
    "UnsafeOutputError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_file",
    "check_output_location",
    "no_space_left",
    "foreign_files",
    "is_inside",
    "is_temporary",
    "owned_files",
    "partial_postfix",
    "process_alive",
    "read_manifest",
    "remove_owned",
    "remove_stale_staging",
    "remove_stale_temporaries",
    "staging_folder",
    "temporary_name",
    "write_manifest",
]
