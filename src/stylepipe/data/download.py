"""`stylepipe download`: fetch a URL to a file you can trust.

- resumable: bytes go to ``PATH.part``; a rerun (or a retry after a dropped
  connection) continues from where it stopped with an HTTP Range request,
  and starts over if the server ignores Range;
- verified: md5 or sha256, a hex prefix of at least 8 digits is enough (as
  torch.hub names its files, e.g. ``vgg16-397923af.pth``);
- atomic: ``PATH`` appears only after verification; a mismatch deletes the
  bad ``.part`` (this program's own download) and leaves nothing under ``PATH``;
- a file already at ``PATH`` (e.g. copied there by hand) is reused if it
  verifies; if it does not, it is left untouched and the error names it with
  the checksum found and the one expected: nothing is downloaded over it;
- ``--extract``: the verified zip/tar archive is unpacked into the folder
  ``PATH`` (see :mod:`stylepipe.data.archive`).

Only the standard library's urllib is used (``http``, ``https``, ``file`` URLs).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import http.client
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

try:
    import fcntl
except ImportError:  # not on Windows: downloads there are not locked
    fcntl = None

from stylepipe import __version__
from stylepipe.arguments import non_negative_int
from stylepipe.io import DISK_FULL, write_json

CHUNK = 1 << 20
DOWNLOAD_CACHE = Path("scratch/downloads")
DOWNLOAD_CACHE_VARIABLE = "STYLEPIPE_DOWNLOADS"
# a checksum, or a prefix of it of 8 digits or more
DIGITS = {"md5": 32, "sha256": 64}


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL and what to do."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected checksum."""


class _Incomplete(Exception):
    """The connection ended before the announced length: retry and resume."""


# Transient failures: retried with backoff, resuming from the .part file.
_TRANSIENT = (
    _Incomplete,
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    ConnectionError,
    socket.timeout,
    TimeoutError,
)
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


def download_cache() -> Path:
    """The root of the download cache: ``$STYLEPIPE_DOWNLOADS`` if set, else ``scratch/downloads``.

    The variable gives every clone, worktree and queued DVC experiment (each
    a copy of the repository with its own ``scratch/``) one cache, so a
    13 GB archive is downloaded once.
    """
    return Path(os.environ.get(DOWNLOAD_CACHE_VARIABLE) or DOWNLOAD_CACHE)


def cache_path(url: str, cache: str | Path | None = None) -> Path:
    """Where a URL's file is kept across runs: ``cache/<host>/<path of the URL>`` (default cache: download_cache()).

    Mirroring the URL keeps two files with the same name apart (no silent mix-up)
    and lets an offline machine be seeded by hand (``file://`` URLs use ``local/``).
    """
    parsed = urllib.parse.urlparse(url)
    parts = [p for p in urllib.parse.unquote(parsed.path).split("/") if p not in ("", ".", "..")]
    if not parts:
        parts = ["download"]
    if parsed.query:  # same path, other query: another file
        parts[-1] += "-" + hashlib.sha256(parsed.query.encode()).hexdigest()[:8]
    host = re.sub(r"[^A-Za-z0-9._-]", "_", parsed.netloc) or "local"
    return Path(cache or download_cache(), host, *parts)


def _checksum(md5: str | None, sha256: str | None) -> tuple[str, str] | None:
    if md5 and sha256:
        raise ValueError("give one checksum, --md5 or --sha256, not both")
    algo, expected = ("md5", md5) if md5 else ("sha256", sha256) if sha256 else (None, None)
    if algo is None:
        return None
    if not re.fullmatch(rf"[0-9a-fA-F]{{8,{DIGITS[algo]}}}", expected):
        other = " (64 digits: a sha256? give it with --sha256)" if algo == "md5" and len(expected) == 64 else ""
        raise ValueError(f"{algo} {expected!r} is not 8 to {DIGITS[algo]} hex digits{other}")
    return algo, expected.lower()


def file_digest(path: Path, algo: str, progress: bool = True) -> str:
    digest = hashlib.new(algo)
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"verify {path.name}", disable=not progress or size < 64 * CHUNK
    ) as bar:
        while block := f.read(CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _matches(path: Path, check: tuple[str, str] | None, progress: bool) -> tuple[bool, str]:
    if check is None:
        return True, ""
    actual = file_digest(path, check[0], progress)
    return actual.startswith(check[1]), actual


def _local_path(url: str) -> Path | None:
    """The file a ``file://`` URL names, or None for other URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(urllib.request.url2pathname(parsed.path))


def _open(url: str, offset: int, timeout: float, validator: str | None = None):
    headers = {"User-Agent": f"stylepipe/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            # the rest only if the file is still the one the .part began: else the server sends it whole
            headers["If-Range"] = validator
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _source_record(part: Path) -> Path:
    """``NAME.part.json`` beside a partial download: its URL and the server's version of the file."""
    return part.with_name(part.name + ".json")


def _discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _source_record(part).unlink(missing_ok=True)


def _resumable(url: str, part: Path) -> tuple[int, str | None]:
    """(bytes to keep, the validator to resume with): 0 unless ``part`` began as a download of ``url``."""
    if not part.exists():
        return 0, None
    try:
        record = json.loads(_source_record(part).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("url") != url:
        began = f"a download of {record['url']}" if isinstance(record, dict) and "url" in record else "of unknown origin"
        print(f"download {url}: {part} is {began}; starting over", file=sys.stderr)
        _discard_part(part)
        return 0, None
    return part.stat().st_size, record.get("validator")


def _validator(response) -> str | None:
    """What identifies this version of the file for If-Range: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-")


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``; raises a _TRANSIENT error if cut off."""
    offset, validator = _resumable(url, part)
    try:
        response = _open(url, offset, timeout, validator)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            total = (err.headers.get("Content-Range") or "").rpartition("/")[2]
            err.close()
            if total.isdigit() and int(total) == offset:
                return  # the .part is already complete (stopped before verification)
            _discard_part(part)  # longer than the file: start over
            raise _Incomplete("range not satisfiable; restarting") from err
        raise
    with response:
        status = getattr(response, "status", None)
        if offset and status != 206:
            offset = 0  # the server (or file://) ignored the Range, or the file changed (If-Range): start over
        elif offset:
            start = _CONTENT_RANGE.match(response.headers.get("Content-Range") or "")
            if start and int(start[1]) == 0:
                offset = 0  # the whole file, though as a range
            elif start is None or int(start[1]) != offset:
                _discard_part(part)
                raise _Incomplete(f"asked for the bytes from {offset:,} on, the server sent "
                                  f"{response.headers.get('Content-Range')!r}; restarting")
        length = response.headers.get("Content-Length")
        expected_total = offset + int(length) if length is not None else None
        if length is not None:
            _check_room(url, part, int(length))
        if not offset:  # a new .part: what it is a download of, for a later run to resume it
            write_json(_source_record(part), {"url": url, "validator": _validator(response)})
        mode = "ab" if offset else "wb"
        try:
            with open(part, mode) as out, tqdm(
                total=expected_total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=Path(urllib.parse.urlparse(url).path).name or url,
                disable=not progress,
                dynamic_ncols=True,
            ) as bar:
                if offset and out.tell() != offset:
                    raise DownloadError(f"{part}: changed while resuming; delete it and run again")
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
                written = out.tell()
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            total = f"{expected_total:,}" if expected_total is not None else "all the"
            raise DownloadError(
                f"{part}: {err.strerror} after {part.stat().st_size:,} of {total} bytes of {url}; the partial "
                f"download is kept: free space on that disk, then run again to resume") from err
    if expected_total is not None and written < expected_total:
        raise _Incomplete(f"connection closed after {written:,} of {expected_total:,} bytes")


def _check_room(url: str, part: Path, remaining: int) -> None:
    """Refuse at once a download the disk cannot hold, rather than after filling it (COCO is 13 GB)."""
    free = shutil.disk_usage(part.parent).free
    if remaining > free:
        elsewhere = ""
        if part.resolve().is_relative_to(download_cache().resolve()):
            elsewhere = f", or set ${DOWNLOAD_CACHE_VARIABLE} to a folder on a disk with room"
        raise DownloadError(
            f"{url}: {gigabytes(remaining)} still to download into {part}, but only {gigabytes(free)} are free "
            f"on that disk: free space there{elsewhere}, then run again")


def gigabytes(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def download(
    url: str,
    output: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    extract: bool = False,
    archive: str | Path | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    lock: bool = False,
) -> Path:
    """Download ``url`` to ``output`` (resume, retry, verify, atomic rename).

    With ``extract=True``, ``output`` is a folder: the archive is downloaded to
    ``archive`` (default ``download_cache()/<host>/<URL path>``) and
    unpacked into ``output`` atomically. An existing verified file is reused.
    ``lock``: ``output`` is in a cache other processes may be filling (see
    :func:`_exclusive`).
    """
    output = Path(output)
    check = _checksum(md5, sha256)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        # no retry can help: stop before waiting for one
        raise ValueError(f"{url}: {'no' if not scheme else 'unsupported'} URL scheme{f' {scheme!r}' if scheme else ''}; "
                         "give an https://, http:// or file:// URL")
    if extract:
        from stylepipe.data.archive import check_destination, extract_archive

        archive = Path(archive) if archive else cache_path(url)
        if archive.resolve().is_relative_to(output.resolve()):
            raise ValueError(f"{archive}: the archive would be kept inside {output}, which extracting replaces "
                             f"whole; give --archive a path outside it")
        check_destination(output)  # before a download that may take hours
        download(url, archive, md5=md5, sha256=sha256, retries=retries, backoff=backoff,
                 timeout=timeout, progress=progress)
        extract_archive(archive, output, progress=progress)
        return output
    if output.is_dir():
        raise ValueError(f"{output}: is a folder; give the file to create (or --extract to unpack an archive into it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(output, url) if lock else contextlib.nullcontext():
        return _download_one(url, output, check, retries, backoff, timeout, progress)


@contextlib.contextmanager
def _exclusive(output: Path, url: str) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``output`` (kept): one download of a file at a time.

    The download cache may be shared (``$STYLEPIPE_DOWNLOADS``: queued DVC
    experiments, clones, users of one filesystem); two processes appending
    to one ``.part`` would corrupt it. The second waits, then finds the file
    verified and reuses it. Where the filesystem has no locks, nothing is held.
    """
    if fcntl is None:
        yield
        return
    with open(output.with_name(f".{output.name}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"download {url}: waiting for another process downloading {output}", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # e.g. a filesystem without locks: proceed as before
            pass
        yield  # closing the file releases the lock


def _download_one(url: str, output: Path, check: tuple[str, str] | None, retries: int, backoff: float,
                     timeout: float, progress: bool) -> Path:
    if output.is_file():
        ok, actual = _matches(output, check, progress)
        if ok:
            return output  # already downloaded (or copied here) and verified
        # Only a verified download is ever renamed to ``output``, so this file was put
        # here some other way (by hand, on an offline machine): a wrong copy, or a
        # checksum that is out of date. Either way a person has to look; it may be
        # the only copy of 13 GB, so it stays as it is and nothing is downloaded.
        raise ChecksumError(
            f"{output} is not the file of {url} (wrong file?): {check[0]} expected {check[1]}, found {actual}. "
            f"It was left as it is and nothing was downloaded. Move it away (or delete it) and run again to "
            f"download the file, or fix the checksum if it is out of date (in params.yaml, if it came from there)."
        )
    local = _local_path(url)
    if local is not None and not local.is_file():
        # retrying cannot make a local file appear
        raise DownloadError(
            f"{url}: {local} does not exist; check the path (in params.yaml, if it came from there)"
        )
    part = output.with_name(output.name + ".part")

    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as err:
            if err.code not in _RETRY_STATUS or attempt == retries:
                raise DownloadError(
                    f"{url}: HTTP {err.code} {err.reason}; check the URL (in params.yaml, if it came from there)"
                ) from err
            error: Exception = err
        except urllib.error.URLError as err:
            if local is not None:  # a local file that cannot be read: no network to wait for
                raise DownloadError(f"{url}: cannot read {local}: {err.reason}") from err
            if attempt == retries:
                raise DownloadError(
                    f"{url}: {err.reason}; check the URL and the network (on an offline machine, put the file "
                    f"at {output} yourself: it is verified and reused)"
                ) from err
            error = err
        except _TRANSIENT as err:
            if attempt == retries:
                then = f"{part} is kept: run again to resume" if part.exists() else "run again to start over"
                raise DownloadError(f"{url}: gave up after {retries + 1} attempts ({err}); {then}") from err
            error = err
        delay = backoff * 2**attempt
        print(f"download {url}: {error}; retrying in {delay:.0f}s (resuming)", file=sys.stderr)
        time.sleep(delay)

    ok, actual = _matches(part, check, progress)
    if not ok:
        _discard_part(part)
        raise ChecksumError(
            f"{url}: {check[0]} mismatch: expected {check[1]}, got {actual}. The download ({part}) was discarded "
            f"and nothing was written to {output}. If the file changed upstream, update the checksum."
        )
    os.replace(part, output)
    _source_record(part).unlink(missing_ok=True)
    return output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="http(s):// or file:// URL")
    parser.add_argument("--output", required=True, type=Path, help="the file (or, with --extract, the folder) to create")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--md5", help="expected MD5 (hex; a prefix of 8 or more digits is accepted)")
    group.add_argument("--sha256", help="expected SHA-256 (hex; a prefix of 8 or more digits is accepted)")
    parser.add_argument("--extract", action="store_true", help="unpack the zip/tar archive into the folder --output")
    parser.add_argument(
        "--archive", type=Path, default=None,
        help=f"with --extract: where to keep the downloaded archive (default ${DOWNLOAD_CACHE_VARIABLE} or {DOWNLOAD_CACHE}, then /<host>/<path>)",
    )
    parser.add_argument("--retries", type=non_negative_int, default=5, help="retries after a dropped connection (default 5)")


def main(args: argparse.Namespace) -> int:
    from stylepipe.data.archive import ArchiveError

    try:
        path = download(args.url, args.output, md5=args.md5, sha256=args.sha256, extract=args.extract,
                        archive=args.archive, retries=args.retries)
    except (DownloadError, ArchiveError, ValueError) as err:
        print(f"stylepipe download: error: {err}", file=sys.stderr)
        return 2
    print(f"{path}: ok")
    return 0
