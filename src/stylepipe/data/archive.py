"""Unpack zip and tar archives safely and atomically.

Every member is checked before anything is written: absolute paths, ``..``
components and links pointing outside the target are refused (a crafted
archive must not write outside its folder). The archive is unpacked into a
temporary folder beside the target, which is renamed onto it at the end.
A mark file in the target tells a later run that the folder is its own to
replace; a folder without it (the user's own files) is refused, not deleted.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from stylepipe.data.shards import atomic_directory


EXTRACT_MARK = ".stylepipe-extracted"


class ArchiveError(ValueError):
    """The archive is unreadable or has a member that would escape the target."""


def _safe_name(archive: Path, name: str) -> str:
    """The member's path, normalised; ArchiveError if it escapes the target."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    norm = posixpath.normpath(clean)
    if norm == ".." or norm.startswith("../"):
        raise ArchiveError(f"{archive}: member {name!r} escapes the target folder; refusing to extract")
    return norm


def _check_link(archive: Path, name: str, target: str) -> None:
    if target.startswith("/") or posixpath.normpath(posixpath.join(posixpath.dirname(name), target)).startswith(".."):
        raise ArchiveError(f"{archive}: link {name!r} -> {target!r} points outside the target folder; refusing to extract")


def _extract_zip(archive: Path, dest: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            name = _safe_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                _check_link(archive, name, zf.read(info).decode("utf-8", "replace"))
        for info in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
            zf.extract(info, dest)


def _extract_tar(archive: Path, dest: Path, progress: bool) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            name = _safe_name(archive, member.name)
            if member.issym():
                _check_link(archive, name, member.linkname)
            elif member.islnk():
                _safe_name(archive, member.linkname)
            elif not (member.isfile() or member.isdir()):
                raise ArchiveError(f"{archive}: member {member.name!r} is a device or fifo; refusing to extract")
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # defence in depth
        for member in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
            tf.extract(member, dest, **extra)


def _target(dest: Path) -> atomic_directory:
    return atomic_directory(dest, what="extracted archive", ours=lambda path: (path / EXTRACT_MARK).is_file())


def check_destination(dest: str | Path) -> None:
    """Raise :class:`~stylepipe.data.shards.OutputNotOurs` where extracting into
    ``dest`` would replace files an extraction did not write (call it before
    a long download)."""
    _target(Path(dest)).check()


def extract_archive(archive: str | Path, dest: str | Path, *, progress: bool = True) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) ``archive`` into the folder ``dest``.

    ``dest`` is replaced whole; it must be absent, empty or an earlier extraction.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not found")
    if zipfile.is_zipfile(archive):
        extractor = _extract_zip
    elif tarfile.is_tarfile(archive):
        extractor = _extract_tar
    else:
        raise ArchiveError(f"{archive}: not a zip or tar archive")
    try:
        with _target(dest) as tmp:
            extractor(archive, tmp, progress)
            (tmp / EXTRACT_MARK).write_text(f"extracted from {archive.name} by stylepipe; replaced whole when extracted again\n")
    except tarfile.FilterError as err:
        # tarfile's `data` filter caught what the checks before it could not (links chained through links):
        # nothing was written outside, and the archive is not damaged, it is unsafe
        raise ArchiveError(f"{archive}: refusing a member ({err}); nothing was extracted: an archive whose "
                           "members would write outside the folder is not unpacked") from err
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise ArchiveError(f"{archive}: damaged archive ({err}); delete it and download again") from err
    return dest

