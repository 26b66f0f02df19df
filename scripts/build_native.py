"""Compile the SIP core with mypyc into a build directory (`make native`).

    .venv/bin/python scripts/build_native.py            # into .native/, if stale
    .venv/bin/python scripts/build_native.py --out DIR  # elsewhere (the native test)

The modules are `gateway.native.MODULES`. They are compiled from a copy of the
package's sources, so the work tree never holds a compiled module (a stale one would
shadow an edited source); `gateway.native` loads the build only while every source it
lists is unchanged. Needs a C compiler and the Python headers
(scripts/install-system-deps.sh installs both); mypy, which carries mypyc, is in the lock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["SIPGW_NATIVE"] = "0"  # this process only reads the module list

from gateway.native import (  # noqa: E402 (the work tree's package, whatever is installed)
    DEFAULT_DIR,
    MANIFEST,
    MODULES,
    check,
    compiled_path,
    digest,
    ext_suffix,
    source_path,
)


def build(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="sipgw-native-") as tmp:
        work = Path(tmp)
        # The whole package's sources: mypy reads what the compiled modules import.
        shutil.copytree(
            ROOT / "gateway", work / "gateway",
            ignore=lambda _dir, names: [n for n in names if n == "__pycache__" or (
                Path(_dir, n).is_file() and not n.endswith((".py", ".typed")))],
        )  # fmt: skip
        shutil.copy(ROOT / "pyproject.toml", work)  # the mypy settings the tree is checked with
        files = [str(source_path(module, work).relative_to(work)) for module in MODULES]
        command = [sys.executable, "-m", "mypyc", *files]
        result = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.stderr.write(result.stdout[-8000:] + result.stderr[-8000:])
            raise SystemExit(f"mypyc failed (exit {result.returncode})")
        groups = sorted(work.glob("*__mypyc" + ext_suffix()))
        if len(groups) != 1:
            raise SystemExit(f"expected one mypyc group library, found {groups}")
        staging = out.with_name(out.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy(groups[0], staging)
        for module in MODULES:
            compiled, target = compiled_path(work, module), compiled_path(staging, module)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(compiled, target)
        manifest = {
            "ext_suffix": ext_suffix(),
            "group": groups[0].name.removesuffix(ext_suffix()),
            "sources": {module: digest(source_path(module, work)) for module in MODULES},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _check_imports(staging)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)


def _check_imports(build: Path) -> None:
    """Every module imports compiled, in a fresh interpreter: mypyc accepts some code
    it cannot run (a class body it evaluates differently), and a build that does not
    import must never replace one that does."""
    env = {**os.environ, "SIPGW_NATIVE": "1", "SIPGW_NATIVE_DIR": str(build)}
    probe = "import importlib, gateway.native as n\nfor m in n.MODULES: importlib.import_module(m)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit("native: the compiled modules do not import; the old build is kept")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/build_native.py", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--force", action="store_true", help="build even if up to date")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    files, why_not = check(out)
    if files and not args.force:
        if not args.quiet:
            print(f"native: {out} is up to date ({len(MODULES)} modules)")
        return 0
    if not args.quiet:
        reason = why_not or "forced"
        print(f"native: compiling {len(MODULES)} modules with mypyc into {out} ({reason})")
    started = time.monotonic()
    build(out)
    files, why_not = check(out)
    if not files:
        raise SystemExit(f"native: the new build is not usable: {why_not}")
    if not args.quiet:
        print(f"native: built in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
