"""Pinned public files, downloaded by name into a data folder (`python -m harness.prepare_data NAME`).

A `Download` is one file of a public GitHub repository at a full commit id, with its SHA-256 and size: the URL
never moves and the bytes are checked, so a download gives the same file as the copy the loaders and their tests
were written against. The file is served by `https://raw.githubusercontent.com/<owner>/<repo>/<commit>/<path>`;
the environment variable `CLEANER_DATA_MIRROR` replaces `https://raw.githubusercontent.com` (a mirror with the
same layout). Why not the Hugging Face data sets of the same benchmarks (HuggingFaceH4/aime_2024, ...): a data
set's files can be replaced under the same name unless a revision is pinned, and their layouts differ from the
files the loaders read; a git blob at a commit never changes. Loading never downloads: the download is an
explicit step, so a run never depends on the network.

`fetch` writes the file to a temporary file beside its target, checks its SHA-256 and only then renames it into
place (atomic on one filesystem): a failed or mismatched download leaves nothing behind, not even the folders it
made. A file already in place is checked, never overwritten: the right checksum is kept as it is, a wrong one is
refused. What it does not protect against: a mirror that serves the right bytes for the wrong commit is
indistinguishable from the source (the checksum is what is trusted); no proxy or credentials are configured
beyond what `urllib` reads from the environment (`https_proxy`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cleaner.data.rows import DataError

ENV_MIRROR = "CLEANER_DATA_MIRROR"
GITHUB_RAW = "https://raw.githubusercontent.com"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # per connection attempt and per read


@dataclass(frozen=True)
class Download:
    """One file of a public GitHub repository at a pinned commit."""

    repo: str  # owner/name on GitHub
    commit: str  # the full 40-hex commit id (a branch or a short id could move or collide)
    path: str  # the file inside the repository
    sha256: str  # of the file's bytes, 64 hex
    size_bytes: int

    def __post_init__(self):
        for value, digits, what in ((self.commit, 40, "commit"), (self.sha256, 64, "sha256")):
            if len(value) != digits or value.strip("0123456789abcdef"):
                raise ValueError(f"{self.repo}: {what} {value!r} is not {digits} lower-case hex digits")

    def url(self, base: str | None = None) -> str:
        """Where the file is served: `base` (default: `CLEANER_DATA_MIRROR`, else raw.githubusercontent.com)."""
        base = base if base is not None else os.environ.get(ENV_MIRROR) or GITHUB_RAW
        return f"{base.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


@dataclass(frozen=True)
class ByHand:
    """A set that is not downloaded by name: why not, and where to get its file."""

    why: str  # "its authors ask that it not be redistributed"
    where: str  # "the Hugging Face data set Gen-Verse/Open-AgentRL-Eval (or ...)"


class DownloadError(DataError):
    """The server could not be reached or sent other bytes than the pinned ones; nothing was written."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _made_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def fetch(source: Download, target: Path, base: str | None = None) -> bool:
    """Put the pinned file at `target`: True when it was downloaded, False when the right file was there already.

    A `DataError` when `target` holds other bytes (it is left as it is); a `DownloadError` when the server cannot
    be reached, answers with an error, or sends bytes whose SHA-256 differs (nothing is left behind)."""
    url = source.url(base)
    if target.exists():
        actual = sha256_of(target)
        if actual != source.sha256:
            raise DataError(f"{target} exists with sha256 {actual}, not the expected {source.sha256} ({url}); "
                            "it is left as it is: delete or move it and run again to download the pinned file")
        return False
    made, tmp, done = _made_folders(target.parent), None, False
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part",
                                         delete=False) as out:
            tmp = Path(out.name)
            digest, size = hashlib.sha256(), 0
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    while chunk := response.read(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, a cut connection
                reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
                raise DownloadError(f"{url}: cannot download ({reason})") from None
        if digest.hexdigest() != source.sha256:
            raise DownloadError(f"{url}: checksum mismatch: expected sha256 {source.sha256} "
                                f"({source.size_bytes} bytes), got {digest.hexdigest()} ({size} bytes); "
                                "nothing was written")
        tmp.replace(target)
        done = True
    finally:
        if not done:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            for folder in reversed(made):
                if not any(folder.iterdir()):
                    folder.rmdir()
    return True
