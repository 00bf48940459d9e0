"""Reading one revision's files: from git and DVC for a commit, from disk for the workspace.

A commit's files come through `dvc.api.DVCFileSystem`: git-tracked ones from git,
DVC outputs from the cache or, failing that, the default remote. A file that cannot
be read is recorded in the revision's ``missing`` list with the DVC output that
holds it (what `dvc fetch` takes, and ``fetch_hint`` the command) or the error
DVC raised. For the workspace, ``workspace_status`` says which stages `dvc status`
finds out of date.
"""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path
from typing import Any

from stylepipe.compare.revisions import Missing, Revision


class Source:
    """Read one revision's files: git + DVC for a commit, the disk for the workspace."""

    def __init__(self, repo: Path, rev: Revision):
        self.repo = repo
        self.rev = rev
        self._fs = None

    @property
    def fs(self):
        """The revision's `DVCFileSystem`, opened on first use."""
        if self._fs is None:
            from dvc.api import DVCFileSystem  # heavy import, only when comparing

            self._fs = DVCFileSystem(str(self.repo), rev=self.rev.sha)
        return self._fs

    def close(self) -> None:
        if self._fs is not None:
            self._fs.close()

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None (recorded in ``rev.missing``) if it cannot be read."""
        if self.rev.is_workspace:
            try:
                return (self.repo / path).read_bytes()
            except FileNotFoundError:
                self._not_found(path)
            except OSError as err:
                self.rev.missing.append(Missing(path, None, _error_text(err), "unparsable"))
            return None
        try:
            return self.fs.read_bytes(path)
        except _not_there():  # not in git, nor in the cache or a reachable remote
            self._not_found(path)
        except Exception as err:  # noqa: BLE001 - DVC's own errors (dvc.yaml that does not resolve, ...)
            data = self._git_blob(path)  # git-tracked files (params, metrics, curves) need no DVC
            if data is not None:
                return data
            self.rev.missing.append(Missing(path, None, _error_text(err), "dvc"))
        return None

    def _not_found(self, path: str) -> None:
        """Record ``path`` as not there, with the output that holds it if this revision recorded one."""
        try:
            self.rev.missing.append(Missing(path, self._output_of(path)))
        except Exception as err:  # noqa: BLE001 - DVC cannot say what the revision records: show why
            self.rev.missing.append(Missing(path, None, _error_text(err), "dvc"))

    def _git_blob(self, path: str) -> bytes | None:
        """The file as git holds it at this commit, or None."""
        result = subprocess.run(["git", "-C", str(self.repo), "cat-file", "blob", f"{self.rev.sha}:{path}"],
                                capture_output=True)
        return result.stdout if result.returncode == 0 else None

    def parse(self, path: str, parser):
        """``parser(bytes)``, or None (recorded in ``rev.missing``) if unreadable or unparsable."""
        raw = self.read(path)
        if raw is None:
            return None
        try:
            return parser(raw)
        except Exception as err:  # noqa: BLE001 - a broken file is reported, not fatal
            self.rev.missing.append(Missing(path, None, f"cannot be parsed ({_error_text(err)})", "unparsable"))
            return None

    def listdir(self, path: str) -> list[str]:
        """The names in folder ``path``, sorted; none if it is not there."""
        try:
            if self.rev.is_workspace:
                return sorted(p.name for p in (self.repo / path).iterdir())
            return sorted(posixpath.basename(p) for p in self.fs.ls(path, detail=False))
        except _not_there():
            return []
        except Exception as err:  # noqa: BLE001 - DVC's own errors are shown, not taken for "empty"
            self.rev.missing.append(Missing(path, None, _error_text(err), "dvc"))
            return []

    def _output_of(self, path: str) -> str | None:
        """The outermost DVC output containing ``path`` (what `dvc fetch` takes), if this
        revision recorded it: an output dvc.yaml declares but dvc.lock has no hash for was
        never produced, and there is nothing to fetch."""
        from dvc.exceptions import NotDvcRepoError

        target = None
        parts = path.split("/")
        for i in range(len(parts), 0, -1):
            candidate = "/".join(parts[:i])
            try:
                info = self.fs.info(candidate)  # for the workspace, DVC's view of it (dvc.lock on disk)
            except _not_there():  # e.g. the directory's listing is itself missing
                continue
            except NotDvcRepoError:  # git only: no file is a DVC output
                return None
            dvc_info = info.get("dvc_info") or {}
            if dvc_info.get("isout") and _has_hash(dvc_info):
                target = candidate
        return target


def fetch_hint(rev: Revision) -> str:
    """The command that makes ``rev``'s missing artifacts readable."""
    targets = sorted({m.target for m in rev.missing if m.target and m.reason == "absent"})
    if not targets:
        return ""
    joined = " ".join(targets)
    if rev.is_workspace:
        return f"dvc pull {joined}"
    if rev.checked_out:
        return f"dvc fetch {joined}"
    return f"git checkout {rev.short} && dvc fetch {joined} && git checkout -"


def _not_there() -> tuple[type[BaseException], ...]:
    """What DVC raises for a file that is simply not there (not in git, the cache or a remote)."""
    from dvc_data.index import DataIndexError  # "failed to load directory": its listing is not in the cache

    return FileNotFoundError, IsADirectoryError, NotADirectoryError, DataIndexError


def _has_hash(dvc_info: dict) -> bool:
    """Whether DVC recorded a hash for this output (dvc.lock or .dvc file), i.e. it was produced."""
    entry = dvc_info.get("entry")
    hash_info = getattr(entry, "hash_info", None)
    if hash_info is not None:
        return bool(getattr(hash_info, "value", None))
    return any(dvc_info.get(key) for key in ("md5", "etag", "checksum"))


def _error_text(err: BaseException) -> str:
    """``Type: message``, as the page shows an error."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def workspace_status(repo: Path) -> tuple[list[tuple[str, str]], str | None]:
    """``dvc status`` of the workspace: [(stage, what changed)] for stages whose outputs are out of
    date (or not what dvc.lock records), and the error text if DVC could not tell."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(str(repo)) as dvc_repo:
            status = dvc_repo.status()
    except NotDvcRepoError:  # git only: nothing says what the outputs should be
        return [], None
    except Exception as err:  # noqa: BLE001 - shown on the page: the staleness is unknown
        return [], _error_text(err)
    return [(str(stage), _describe_status(entries)) for stage, entries in status.items()], None


def _describe_status(entries: Any) -> str:
    """One line for a stage's `dvc status` entries (``changed deps``, ``changed outs``, ...)."""
    parts = []
    for item in entries if isinstance(entries, list) else [entries]:
        if not isinstance(item, dict):
            parts.append(str(item))
            continue
        for kind, changes in item.items():
            if not isinstance(changes, dict):
                parts.append(str(kind))
                continue
            things = []
            for path, change in changes.items():
                if isinstance(change, dict):  # params.yaml: {key: modified}
                    things.append(f"{path} ({', '.join(f'{key} {what}' for key, what in change.items())})")
                else:
                    things.append(f"{path} {change}")
            parts.append(f"{kind}: {', '.join(things)}")
    return "; ".join(parts)
