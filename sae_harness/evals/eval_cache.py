"""The shared eval cache: the work of each eval that does not depend on the SAE (the LLM's
activations on the eval's prompts and texts, the LLM's own probes), computed once and reused by
every later run with the same key.

Layout: <cache_dir>/evals/<name>-<digest>/, one directory per entry; key.json inside it holds the
key (everything that determines the entry) and is written last, so a directory without a matching
key.json is partial or stale and is rebuilt. An entry is built in <dir>.tmp<pid> and renamed into
place when complete, by one process at a time (another that needs it waits, then reuses it). A
cached file inside an entry is written to a temporary name and renamed too. files.json, written
before key.json, holds the size of each file the build wrote: an entry with one of them cut short,
replaced or missing is damaged, and is named in one line and rebuilt.
"""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from sae_harness.run import lock

FORMAT = 1
"""Bump when what an entry holds changes: old entries then miss instead of being misread."""


def digest(obj) -> str:
    """A short, stable hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def texts_digest(texts) -> str:
    """Hash of a sequence of strings or (label, text) pairs, in order."""
    h = hashlib.sha256()
    for item in texts:
        h.update(json.dumps(item).encode())
    return h.hexdigest()[:16]


def files_of(path: Path) -> dict:
    """{relative path: size} of each file of an entry, its own key.json and files.json left out."""
    path = Path(path)
    own = {path / "key.json", path / "files.json"}
    return {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file() and f not in own}


def sae_bench_version() -> str:
    from importlib.metadata import version

    return version("sae-bench")


class EvalCache:
    """Entries under root (<cache_dir>/evals); root None: no cache, every entry is built in a fresh
    temporary directory under `scratch` and not kept."""

    def __init__(self, root: Path | None, scratch: Path):
        self.root = Path(root) if root is not None else None
        self.scratch = Path(scratch)

    def path(self, name: str, key: dict) -> Path:
        base = self.root if self.root is not None else self.scratch / "uncached"
        return base / f"{name}-{digest(key | {'format': FORMAT})}"

    def is_complete(self, path: Path, key: dict, say: bool = True) -> bool:
        """Whether path holds the whole entry for key (its key.json matches and each file listed in
        files.json has its size; an entry from before files.json is trusted on its key)."""
        try:
            if json.loads((path / "key.json").read_text()) != json.loads(json.dumps(key | {"format": FORMAT}, default=str)):
                return False
        except (OSError, ValueError):
            return False
        try:
            sizes = json.loads((path / "files.json").read_text())
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            sizes = None
        found = files_of(path)  # files added to the entry later (absorption's prompt activations) are not listed
        if not isinstance(sizes, dict) or any(found.get(name) != size for name, size in sizes.items()):
            if say:
                print(f"eval cache: {path} is damaged (a file is cut short, replaced or missing); building it again")
            return False
        return True

    def entry(self, name: str, key: dict, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """(path of the complete entry, hit). On a miss build(tmp_dir) fills a temporary directory,
        which is renamed into place once build returns; a partial or stale entry is replaced."""
        path = self.path(name, key)
        if self.root is not None and self.is_complete(path, key):
            return path, True
        if self.root is None:
            return self.write(name, key, build), False
        with lock.building(path):
            if self.is_complete(path, key, say=False):  # the process this one waited for built it
                return path, True
            return self.write(name, key, build), False

    def write(self, name: str, key: dict, build: Callable[[Path], None]) -> Path:
        """Build the entry afresh (build(tmp_dir), then key.json, then rename) and return its path."""
        path = self.path(name, key)
        with lock.new_folder(path) as tmp:
            build(tmp)
            (tmp / "files.json").write_text(json.dumps(files_of(tmp), indent=1))
            (tmp / "key.json").write_text(json.dumps(key | {"format": FORMAT}, indent=1, default=str))
        return path

    def size_mb(self) -> float:
        if self.root is None or not self.root.exists():
            return 0.0
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) / 2**20

    def describe(self) -> str:
        """The line each run prints: where the cache is, its size, how to clear it."""
        if self.root is None:
            return "eval cache: off (every eval computes the LLM's side again)"
        return f"eval cache: {self.root} ({self.size_mb():.0f} MB); clear with: rm -r {self.root}"
