"""The files a Hugging Face Space of the demo needs, listed or copied: the one deployment path, tested.

    python -m sdfn.space_files                     # list them (repository-relative), one a line
    python -m sdfn.space_files --copy DEST         # copy exactly them into DEST (which must be empty or absent)
    hf upload USER/SPACE DEST . --repo-type space --delete "*"

A Space runs `demo.py` (README.md's front matter: `sdk: gradio`, `app_file: demo.py`) after installing
requirements.txt, so it gets README.md, demo.py, requirements.txt and the `sdfn` package with its package
data (presets, model configs, the shipped sdfn-tiny in safetensors shards of at most 8 MiB: every file fits
the Hub's 10 MiB limit for files outside LFS). Never uploaded: generated catalogs (a Space generates its own
default catalog on start, under `sdfn.paths.sdfn_home()`), runs/, tests, benchmarks and anything git ignores.
`--delete "*"` removes files of an earlier upload that are no longer in the list.

Why not `git push` to the Space: the repository's history holds weight files over 10 MiB (before sharding), which
the Hub refuses without LFS; an upload of this list sends the current files only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from sdfn.errors import ConfigError
from sdfn.paths import source_checkout

TOP_LEVEL = ("README.md", "demo.py", "requirements.txt")
PACKAGE = "sdfn"
MAX_FILE_BYTES = 10 * 2**20
_NEVER = ("__pycache__", ".pyc")


def space_files(root: Path | None = None) -> list[str]:
    """Repository-relative paths of every file a Space needs, sorted. In a git checkout: the files git would
    commit (tracked, or new and not ignored) under the package; elsewhere every file under it."""
    root = Path(root) if root is not None else source_checkout()
    if root is None:
        raise ConfigError("sdfn.space_files runs from a source checkout of sdfn (git clone); this sdfn is an "
                          "installed copy.")
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--",
                                 *TOP_LEVEL, PACKAGE], cwd=root, check=True, capture_output=True).stdout
        names = [n for n in listed.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [*TOP_LEVEL, *(p.relative_to(root).as_posix() for p in (root / PACKAGE).rglob("*") if p.is_file())]
    files = sorted({n for n in names if (root / n).is_file() and not any(part in n for part in _NEVER)})
    missing = [name for name in TOP_LEVEL if name not in files]
    if missing:
        raise ConfigError(f"{root} lacks {', '.join(missing)}: not a complete sdfn checkout.")
    too_big = [f"{n} ({(root / n).stat().st_size / 2**20:.1f} MiB)" for n in files
               if (root / n).stat().st_size > MAX_FILE_BYTES]
    if too_big:
        raise ConfigError(f"files over the Hub's 10 MiB limit without LFS: {', '.join(too_big)}. Shard weights "
                          "(sdfn.weights.save_tensors) before deploying.")
    return files


def copy_space(dest: Path, root: Path | None = None) -> list[str]:
    """Copy exactly `space_files()` into `dest` (empty or absent); returns what was copied."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} is not empty: give an empty or new folder, so that it holds only the Space's "
                          "files.")
    root = Path(root) if root is not None else source_checkout()
    files = space_files(root)
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, dest / name)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdfn.space_files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copy", metavar="DEST", help="copy the files into DEST instead of listing them")
    args = parser.parse_args(argv)
    try:
        files = copy_space(Path(args.copy)) if args.copy else space_files()
    except (ConfigError, OSError) as err:
        print(f"sdfn.space_files: error: {err}", file=sys.stderr)
        return 2
    if args.copy:
        print(f"{len(files)} files copied to {args.copy}; upload them with: "
              f"hf upload USER/SPACE {args.copy} . --repo-type space --delete \"*\"")
    else:
        print("\n".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
