"""The compiled SIP core: mypyc builds of the sans-I/O hot path, used when fresh.

`make native` (scripts/build_native.py) compiles the modules of `MODULES` with mypyc
into `.native/` beside the package, with a manifest of the sources it compiled. On
import, `gateway/__init__.py` calls `install()`: if that build exists and every one of
its sources is byte for byte the source in the tree, an import finder makes Python
load those modules from `.native/`; otherwise nothing changes and the pure-Python
modules run. A stale build is never used, so an edit to a source takes effect at
once, compiled or not, and the two paths behave the same (the compiled one is tested
in `tests/unit/test_native.py` with the hot path's own tests).

`SIPGW_NATIVE`: `auto` (the default: compiled if fresh), `0` (never; the test suite
sets it, since a test may patch a module, which a compiled module does not allow),
`1` (required: an error if the build is missing or stale; the bench and the native
test use it). `SIPGW_NATIVE_DIR` names another build directory.

Only the standard library is used here: it runs before anything else of the package.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The hot path of a proxied call and of its events (bench/hotpath.py), sans-I/O only:
# none of these meets the event loop, so a compiled module never changes when an await
# yields. Each is valid for mypyc as it is (mypy --strict, no monkeypatching in them).
MODULES: tuple[str, ...] = (
    "gateway.stats",
    "gateway.transport.addresses",
    "gateway.sip.errors",
    "gateway.sip.headers",
    "gateway.sip.uri",
    "gateway.sip.message",
    "gateway.sip.transaction",
    "gateway.sip.random_ids",
    "gateway.proxy.branch_state",
    "gateway.proxy.context",
    "gateway.proxy.core",
    "gateway.proxy.destinations",
    "gateway.proxy.directory",
    "gateway.proxy.flood",
    "gateway.proxy.messages",
    "gateway.proxy.observe",
    "gateway.proxy.options",
    "gateway.proxy.record_route",
    "gateway.proxy.routing",
    "gateway.proxy.timers",
    "gateway.proxy.tm",
    "gateway.calls.events",
    "gateway.calls.model",
    "gateway.calls.tracker",
)

ENV_VARIABLES = frozenset({"SIPGW_NATIVE", "SIPGW_NATIVE_DIR"})  # not settings (config/reader.py)
MANIFEST = "manifest.json"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the directory holding gateway/
DEFAULT_DIR = PACKAGE_ROOT / ".native"


class NativeError(RuntimeError):
    """SIPGW_NATIVE=1, and the compiled core cannot be used."""


@dataclass(frozen=True, slots=True)
class Status:
    """Which SIP core runs in this process, and why."""

    compiled: bool
    reason: str  # for the log line and the bench summary
    modules: int = 0

    def describe(self) -> str:
        if self.compiled:
            return f"compiled by mypyc ({self.modules} modules)"
        return f"pure Python ({self.reason})"


_status = Status(False, "not installed")


def status() -> Status:
    return _status


def source_path(module: str, root: Path = PACKAGE_ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def compiled_path(root: Path, module: str) -> Path:
    """Where a build under `root` holds `module` (mypyc's layout: beside the sources)."""
    return root.joinpath(*module.split(".")).with_suffix(ext_suffix())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ext_suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def check(
    build: Path, root: Path = PACKAGE_ROOT, modules: Sequence[str] = MODULES
) -> tuple[dict[str, Path], str]:
    """The build's module files by name if it is usable here, else ({}, why not)."""
    try:
        manifest = json.loads((build / MANIFEST).read_text())
    except FileNotFoundError:
        return {}, f"no build in {build} (make native)"
    except (OSError, ValueError) as err:
        return {}, f"unreadable manifest in {build}: {err}"
    if manifest.get("ext_suffix") != ext_suffix():
        return {}, f"built for {manifest.get('ext_suffix')}, this Python loads {ext_suffix()}"
    sources: dict[str, str] = manifest.get("sources", {})
    if set(sources) != set(modules):
        return {}, "built from another list of modules (make native)"
    files: dict[str, Path] = {}
    for module, compiled_digest in sources.items():
        try:
            current = digest(source_path(module, root))
        except OSError:
            return {}, f"{module}: source missing"
        if current != compiled_digest:
            return {}, f"stale: {source_path(module, root).relative_to(root)} changed (make native)"
        files[module] = compiled_path(build, module)
    group = manifest.get("group")
    if group:  # mypyc's shared library of the modules compiled together
        files[group] = build / (group + ext_suffix())
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing or not sources:
        return {}, f"incomplete build in {build}: {', '.join(missing) or 'no modules'}"
    return files, ""


class _Finder(MetaPathFinder):
    """Finds the compiled modules (and nothing else) in the build directory."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def install(environ: dict[str, str] | None = None) -> Status:
    """Put the compiled core first on the import path if asked and usable."""
    global _status
    env = os.environ if environ is None else environ
    mode = env.get("SIPGW_NATIVE", "auto").strip().lower()
    if mode in ("0", "off", "no", "false"):
        _status = Status(False, "SIPGW_NATIVE=0")
        return _status
    if mode not in ("auto", "", "1", "on", "yes", "true"):
        raise NativeError(f"SIPGW_NATIVE: expected auto, 0 or 1, not {mode!r}")
    build = Path(env.get("SIPGW_NATIVE_DIR") or DEFAULT_DIR)
    files, why_not = check(build)
    if not files:
        if mode != "auto":
            raise NativeError(f"SIPGW_NATIVE=1 but the compiled core is unusable: {why_not}")
        _status = Status(False, why_not)
        return _status
    already = [name for name in files if name in sys.modules]
    if already:  # imported as Python before us: mixing would be two copies of a class
        _status = Status(False, f"imported before the compiled core: {', '.join(already)}")
        if mode != "auto":
            raise NativeError(_status.reason)
        return _status
    sys.meta_path.insert(0, _Finder(files))
    _status = Status(True, "", modules=sum(name.startswith("gateway.") for name in files))
    return _status
