"""The revisions to compare: git commits, DVC experiments and the workspace, named and labelled.

A revision is resolved with git (``rev-parse``; a DVC experiment is a ref under
``refs/exps/``, found as `dvc` finds it); what is read from it later lands in its
``Revision``, and what could not be read in its ``missing`` list.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

WORKSPACE = "workspace"
EXPERIMENT_REFS = "refs/exps/"


class CompareError(Exception):
    """A problem the user must fix (unknown revision, not a repository)."""


@dataclass
class Missing:
    """A file of a revision that cannot be shown, and why."""

    path: str
    target: str | None  # the DVC output holding it, if this revision recorded that output (has its hash)
    error: str | None = None  # why it cannot be read or parsed, when it is not plain "not there"
    reason: str = "absent"  # absent | unparsable | dvc (DVC raised an error other than not-found)


@dataclass
class Revision:
    """One revision as the page shows it: where it is and what was read from it."""

    name: str             # as the user typed it
    sha: str | None       # None for the workspace
    short: str
    subject: str
    date: str
    params: dict = field(default_factory=dict)
    packages: dict[str, str] | None = None  # constraints.txt: {package: version}; None where not recorded
    metrics: dict = field(default_factory=dict)
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    val_curves: dict[str, pd.DataFrame] = field(default_factory=dict)  # validation losses, where recorded
    summaries: dict[str, dict] = field(default_factory=dict)  # style -> its training's summary.json
    images: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (style, image) -> encoded image
    content: dict[str, bytes] = field(default_factory=dict)             # image -> encoded image
    missing: list[Missing] = field(default_factory=list)
    stale: list[tuple[str, str]] = field(default_factory=list)  # workspace: (stage, what changed), as `dvc status`
    status_error: str | None = None  # workspace: why `dvc status` could not run
    derived: set[str] = field(default_factory=set)  # styles whose unweighted losses are weighted / weight
    styles: list[str] = field(default_factory=list)
    image_names: list[str] = field(default_factory=list)
    label: str = ""
    checked_out: bool = False  # the commit the workspace is on: `dvc fetch` needs no checkout

    @property
    def is_workspace(self) -> bool:
        return self.sha is None


def git(repo: Path, *args: str) -> str:
    """The output of ``git -C repo ARGS``; a CompareError with git's message if it fails."""
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise CompareError(result.stderr.strip() or f"git {' '.join(args)} failed")
    return result.stdout


def resolve_revision(repo: Path, name: str) -> Revision:
    """The commit ``name`` stands for (or the workspace), with its short SHA, subject and date."""
    if name == WORKSPACE:
        changed = git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()
        subject = f"files on disk ({len(changed)} tracked files changed)" if changed else "files on disk"
        return Revision(name=name, sha=None, short=WORKSPACE, subject=subject, date="")
    experiment = name if name.startswith(EXPERIMENT_REFS) and name.count("/") == 4 else None
    try:
        sha = git(repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}").strip()
    except CompareError:
        experiment = _experiment_ref(repo, name)
        if experiment is None:
            raise CompareError(f"unknown revision {name!r} in {repo}: give a commit, branch, tag, "
                               f"DVC experiment name or `{WORKSPACE}`") from None
        sha = git(repo, "rev-parse", experiment).strip()
    short, subject, date = git(repo, "log", "-1", "--format=%h%x00%s%x00%ci", sha).rstrip("\n").split("\x00")
    if experiment is not None:  # its commit subject is DVC's, not the user's
        subject = f"DVC experiment {experiment.rsplit('/', 1)[1]} (baseline {_baseline(experiment)[:7]})"
    return Revision(name=name, sha=sha, short=short, subject=subject, date=date)


def _baseline(ref: str) -> str:
    """The baseline commit of an experiment ref ``refs/exps/ab/cdef.../NAME``."""
    return "".join(ref.split("/")[2:4])


def _experiment_ref(repo: Path, name: str) -> str | None:
    """The git ref of a DVC experiment (`dvc exp run -n NAME`, `dvc exp save -n NAME`), found as `dvc` finds it.

    A name saved on several baselines means the one whose baseline is HEAD; with
    none of them on HEAD the name is ambiguous (a CompareError listing them)."""
    refs = [ref for ref in git(repo, "for-each-ref", "--format=%(refname)", EXPERIMENT_REFS).split()
            if ref.count("/") == 4 and ref.rsplit("/", 1)[1] == name]
    if len(refs) <= 1:
        return refs[0] if refs else None
    try:
        head = git(repo, "rev-parse", "--verify", "--quiet", "HEAD").strip()
    except CompareError:
        head = None
    on_head = [ref for ref in refs if _baseline(ref) == head]
    if on_head:
        return on_head[0]
    listed = "; ".join(f"{ref} (baseline {_baseline(ref)[:7]})" for ref in sorted(refs))
    raise CompareError(f"DVC experiment name {name!r} is ambiguous: it exists on {len(refs)} baselines and none "
                       f"is HEAD: {listed}. Give the full ref, or check out its baseline first")


def default_revisions(names: list[str]) -> list[str]:
    """What the command compares: none given, HEAD with the workspace; one, it with the workspace."""
    if not names:
        return ["HEAD", WORKSPACE]
    if len(names) == 1:
        return [names[0], WORKSPACE]
    return names


def label_revisions(revs: list[Revision]) -> None:
    """Give each revision the name the page shows: its short SHA, ``NAME (SHA)`` or ``workspace``, unique."""
    seen: dict[str, int] = {}
    for rev in revs:
        if rev.is_workspace:
            label = WORKSPACE
        elif rev.short.startswith(rev.name) or rev.name.startswith(rev.short):
            label = rev.short
        else:
            label = f"{rev.name} ({rev.short})"
        seen[label] = seen.get(label, 0) + 1
        rev.label = label if seen[label] == 1 else f"{label} #{seen[label]}"
