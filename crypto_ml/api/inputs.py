"""Where a table job's input comes from: a path inside the server's data directory, or an
``s3://BUCKET/KEY`` object (or ``KEY/`` prefix: a Parquet dataset, hive partitions kept)
reached with the model store's S3 client and credentials (boto3's chain: ``AWS_*``,
``AWS_ENDPOINT_URL_S3`` for MinIO and the like).

An S3 input is copied into the job's own folder first, before the table is checked (so a
bad table still gets its 422 before anything is queued), and read from there as a local
table; the copy is deleted when the job ends. It needs that much free disk beside the jobs'
outputs (``CRYPTO_ML_API_JOBS_DIR``).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from crypto_ml.core.errors import ConfigError, CryptoMLError, DataNotFound
from crypto_ml.data.table import Columns, TableInfo, TableSource
from crypto_ml.data.table_checks import as_given
from crypto_ml.worker.model_store import s3_client

S3 = "s3://"

#: A job body's names of the id, time and value columns.
BODY_COLUMNS = ("id_col", "time_col", "value_col")


def read_input(given: str, columns: Columns, data_dir: Path, copy: Path,
               outputs: Path | None = None) -> tuple[TableSource, TableInfo, dict[str, Any]]:
    """The job's table (a path in ``data_dir``, or an S3 URI copied into ``copy``), checked;
    what the job's manifest records of it (never a path of the server's); ConfigError naming
    the input as given, or when it is a folder holding ``outputs`` (the jobs folder)."""
    path: Path | None = None
    state: dict[str, Any] = {}
    named = f"input {given[:200]!r}"
    try:
        if given.startswith(S3):
            path, state = s3_input(given, copy)
        else:  # recorded (and shown in the output's metadata) as a path in the data directory
            path = local_input(given, data_dir)
            _apart(path, outputs, given)
            state = {"input": str(path.relative_to(data_dir.resolve()))}
        source = TableSource(path, columns)
        return source, source.check(), state
    except CryptoMLError as exc:  # InvalidTable is a ValueError too: first
        discard_copy(copy)
        if path is None:
            raise
        raise ConfigError(as_given(str(exc), named, path, given, BODY_COLUMNS)) from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        discard_copy(copy)
        raise ConfigError(as_given(f"cannot read input {given[:200]!r} as a long table "
                                   f"({type(exc).__name__}: {str(exc)[:300]})",
                                   named, path, given)) from None


def _apart(path: Path, outputs: Path | None, given: str) -> None:
    """ConfigError when ``path`` is a folder holding ``outputs``: each job's output would be
    read as a table by every later job over that folder (the command line refuses it too),
    which then failed on the first output already there."""
    if outputs is None or not path.is_dir():
        return
    if outputs.resolve().is_relative_to(path):
        raise ConfigError(f"input {given[:200]!r}: it holds the server's job outputs "
                          "(CRYPTO_ML_API_JOBS_DIR), which later jobs would read as series; "
                          "give a file or a folder that does not hold them")


def local_input(given: str, root: Path) -> Path:
    """``given`` inside ``root`` (the data directory), or ConfigError: nothing else is read."""
    root = root.resolve()
    if Path(given).is_absolute():  # no probing for where the data directory is
        raise ConfigError(f"input {given[:200]!r} is an absolute path; give a path relative "
                          "to the server's data directory (CRYPTO_ML_DATA_DIR), or an s3:// URI")
    try:
        path = (root / given).resolve()
        found = path.exists()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop...
        raise ConfigError(f"input {given[:200]!r} is not a usable path ({_why(exc)})") from None
    if not path.is_relative_to(root):
        raise ConfigError(f"input {given[:200]!r} is outside the server's data directory; "
                          "give a path relative to it (CRYPTO_ML_DATA_DIR), or an s3:// URI")
    if not found:
        raise ConfigError(f"no input {given[:200]!r} in the server's data directory")
    if path.is_dir():  # a folder's files are read too: none may lead out (a symlink)
        for inside in path.rglob("*"):
            named = str(inside.relative_to(path))[:200]
            try:
                inside = inside.resolve()
            except (OSError, RuntimeError) as exc:  # Python 3.11: RuntimeError on a loop
                raise ConfigError(f"input {given[:200]!r} holds {named!r}, which is not a "
                                  f"usable path ({_why(exc)})") from None
            if not inside.is_relative_to(root):
                raise ConfigError(f"input {given[:200]!r} holds {named!r}, which leads "
                                  "outside the server's data directory")
    return path


def _why(exc: Exception) -> object:
    """What went wrong, without the full path (an OSError's strerror; a loop says so)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "a symlink loop" if isinstance(exc, RuntimeError) else exc


def s3_input(uri: str, folder: Path, client: Any = None) -> tuple[Path, dict[str, Any]]:
    """Copy the object or dataset at ``uri`` into ``folder``; the local path to read, and
    what tells this state of the input from another (a table run's manifest records it, so
    that a job resumed later finds the same objects: their keys, sizes and ETags)."""
    bucket, _, key = uri.removeprefix(S3).partition("/")
    if not bucket or not key.strip("/"):
        raise ConfigError(f"input {uri[:200]!r}: name a bucket and an object or prefix, "
                          "s3://BUCKET/KEY")
    client = client or s3_client()
    objects = _listed(client, uri, bucket, key)
    state = _fingerprint(uri, objects)
    if [o["Key"] for o in objects] == [key]:  # one object
        return _fetch(client, uri, bucket, key, folder / PurePosixPath(key).name), state
    prefix = key.rstrip("/") + "/"
    for name in (o["Key"] for o in objects):
        relative = PurePosixPath(name[len(prefix):])
        if ".." in relative.parts or relative.is_absolute():
            raise ConfigError(f"input {uri[:200]!r} holds an unsafe object name {name[:200]!r}")
        _fetch(client, uri, bucket, name, folder.joinpath(*relative.parts))
    return folder, state


def _fingerprint(uri: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's ``input`` fields for an S3 input (a local one's are its path, sizes and
    times: :meth:`~crypto_ml.data.table.TableSource.fingerprint`)."""
    lines = "\n".join(f"{o['Key']}\0{o.get('Size')}\0{o.get('ETag')}" for o in objects)
    return {"input": uri, "input_size": sum(int(o.get("Size") or 0) for o in objects),
            "input_mtime": None,  # the same bytes uploaded again are the same input
            "input_files": f"{len(objects)} object(s), "
                           f"{hashlib.sha256(lines.encode()).hexdigest()[:16]}"}


def discard_copy(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _listed(client: Any, uri: str, bucket: str, key: str) -> list[dict[str, Any]]:
    """The object ``key``, or every object under the prefix ``key/`` (as S3 lists them:
    ``Key``, ``Size``, ``ETag``, ``LastModified``)."""
    prefix = key.rstrip("/") + "/"
    found: list[dict[str, Any]] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            found += [o for o in page.get("Contents", [])
                      if o["Key"] == key or (o["Key"].startswith(prefix)
                                             and not o["Key"].endswith("/"))]
    except Exception as exc:  # botocore's errors: a missing bucket, a denial, no endpoint
        raise _unreadable(uri, exc) from None
    if not found:
        raise ConfigError(f"no object or prefix {uri[:200]!r}")
    alone = [o for o in found if o["Key"] == key]
    return alone or found


def _fetch(client: Any, uri: str, bucket: str, key: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        client.download_file(bucket, key, str(target))
    except Exception as exc:  # botocore's errors
        raise _unreadable(uri, exc) from None
    return target


def _unreadable(uri: str, exc: Exception) -> ConfigError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    if code:  # S3 answered: the caller's bucket, key or rights
        return ConfigError(f"cannot read input {uri[:200]!r}: S3 says {code}")
    if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return DataNotFound(f"cannot read input {uri[:200]!r}: the server has no S3 "
                            "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a "
                            "role); its operator sets them")
    return DataNotFound(f"cannot reach S3 for input {uri[:200]!r} ({type(exc).__name__}); "
                        "check AWS_ENDPOINT_URL_S3 and the network, then POST again")
