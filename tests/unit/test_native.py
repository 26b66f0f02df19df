"""gateway.native: a compiled build is used only when it is complete and fresh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import native
from gateway.native import NativeError, check, digest, ext_suffix, install

MODULES = ("gateway.sip.one", "gateway.proxy.two")


def fake_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A package root with two sources, and a complete build of them."""
    root, build = tmp_path / "root", tmp_path / "build"
    for module in MODULES:
        source = native.source_path(module, root)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"# {module}\n")
        compiled = native.compiled_path(build, module)
        compiled.parent.mkdir(parents=True, exist_ok=True)
        compiled.write_bytes(b"\x7fELF")
    (build / ("abc__mypyc" + ext_suffix())).write_bytes(b"\x7fELF")
    manifest = {
        "ext_suffix": ext_suffix(),
        "group": "abc__mypyc",
        "sources": {m: digest(native.source_path(m, root)) for m in MODULES},
    }
    (build / native.MANIFEST).write_text(json.dumps(manifest))
    return root, build


def test_a_complete_fresh_build_names_each_module_and_the_group(tmp_path: Path) -> None:
    root, build = fake_tree(tmp_path)
    files, why_not = check(build, root, MODULES)
    assert why_not == ""
    assert set(files) == {*MODULES, "abc__mypyc"}
    assert files["gateway.sip.one"] == build / "gateway" / "sip" / ("one" + ext_suffix())


def test_an_edited_source_makes_the_build_stale_and_unused(tmp_path: Path) -> None:
    root, build = fake_tree(tmp_path)
    native.source_path("gateway.proxy.two", root).write_text("# edited\n")
    files, why_not = check(build, root, MODULES)
    assert files == {}
    assert "stale" in why_not and "gateway/proxy/two.py" in why_not


def test_a_missing_compiled_module_or_manifest_is_no_build(tmp_path: Path) -> None:
    root, build = fake_tree(tmp_path)
    build.joinpath("gateway", "sip", "one" + ext_suffix()).unlink()
    files, why_not = check(build, root, MODULES)
    assert files == {} and "incomplete" in why_not and "gateway.sip.one" in why_not
    files, why_not = check(tmp_path / "nowhere", root)
    assert files == {} and "no build" in why_not


def test_a_build_of_another_module_list_is_not_loaded(tmp_path: Path) -> None:
    root, build = fake_tree(tmp_path)
    files, why_not = check(build, root, (*MODULES, "gateway.sip.three"))
    assert files == {} and "another list of modules" in why_not


def test_a_build_for_another_python_is_not_loaded(tmp_path: Path) -> None:
    root, build = fake_tree(tmp_path)
    manifest = json.loads((build / native.MANIFEST).read_text())
    manifest["ext_suffix"] = ".cpython-39-x86_64-linux-gnu.so"
    (build / native.MANIFEST).write_text(json.dumps(manifest))
    files, why_not = check(build, root, MODULES)
    assert files == {} and "cpython-39" in why_not


def test_required_but_unusable_is_an_error_naming_why(tmp_path: Path) -> None:
    with pytest.raises(NativeError, match=r"SIPGW_NATIVE=1.*no build"):
        install({"SIPGW_NATIVE": "1", "SIPGW_NATIVE_DIR": str(tmp_path)})
    with pytest.raises(NativeError, match="SIPGW_NATIVE: expected auto, 0 or 1"):
        install({"SIPGW_NATIVE": "fast"})


def test_auto_without_a_build_and_off_run_pure_python(tmp_path: Path) -> None:
    try:
        status = install({"SIPGW_NATIVE_DIR": str(tmp_path)})
        assert not status.compiled and "no build" in status.describe()
        status = install({"SIPGW_NATIVE": "0"})
        assert not status.compiled and status.describe() == "pure Python (SIPGW_NATIVE=0)"
    finally:
        install()  # the suite's own setting again (SIPGW_NATIVE=0, tests/conftest.py)


def test_the_suite_runs_the_pure_python_core() -> None:
    import gateway.sip.message

    assert not native.status().compiled
    assert gateway.sip.message.__file__ is not None
    assert gateway.sip.message.__file__.endswith(".py")
