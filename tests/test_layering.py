"""The package's layers: graph helpers load without the passes, the core without viz, one
registry shape, no file over 400 lines."""

import ast
from pathlib import Path

import pytest

import qcompiler
from qcompiler.errors import ConfigError
from qcompiler.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every qcompiler module ``path`` imports, at top level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n.startswith("qcompiler")}


def _files(*parts: str) -> list[Path]:
    pkg = ROOT / "qcompiler"
    return [p for part in parts for p in ([pkg / part] if part.endswith(".py") else (pkg / part).rglob("*.py"))]


# The bottom layers know nothing of passes, schemes, the report, backends, the API or the tools.
_LOWER = ("graph", "verify", "ops", "quant", "registry.py", "errors.py", "spec.py", "pass_manager.py", "contracts.py")
_UPPER = ("qcompiler.passes", "qcompiler.schemes", "qcompiler.report", "qcompiler.backends", "qcompiler.api",
          "qcompiler.viz", "qcompiler.cli")


@pytest.mark.parametrize("path", _files(*_LOWER), ids=lambda p: str(p.relative_to(ROOT)))
def test_lower_layers_import_no_upper_layer(path):
    bad = sorted(m for m in _imports(path) if m.startswith(_UPPER))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_core_does_not_import_viz():
    core = [p for p in (ROOT / "qcompiler").rglob("*.py") if not p.relative_to(ROOT / "qcompiler").parts[0]
            in ("viz", "cli")]
    bad = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.startswith("qcompiler.viz")) for p in core}
    assert not {k: v for k, v in bad.items() if v}


def test_no_file_over_400_lines_and_no_top_level_schemes_modules():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "qcompiler").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
    assert not list((ROOT / "qcompiler").glob("schemes_*.py"))


def test_registry_lists_lazy_names_and_says_what_exists():
    reg = Registry("widget", lazy={"later": "qcompiler.no_such_module"})
    reg.register("a", 1)
    assert reg.get("a") == 1 and reg.names() == ["a", "later"] and "later" in reg
    with pytest.raises(ConfigError, match="unknown widget 'b'") as e:
        reg.get("b")
    assert "a, later" in str(e.value)
    with pytest.raises(ConfigError, match="widget 'later' is not available"):
        reg.get("later")


def test_builtin_registries():
    assert {"int8-outlier", "nf4", "gptq-w4"} <= set(qcompiler.list_schemes())
    assert {"calibrate", "dce", "lower-triton"} <= set(qcompiler.list_passes())
    assert {"eager", "triton", "onnxruntime"} <= set(qcompiler.list_backends())


def test_schemes_build_pass_objects_and_enforce_calibration():
    from qcompiler.passes.dce import DeadCodeElimination
    from qcompiler.schemes import get_scheme

    for name in qcompiler.list_schemes():
        sch = get_scheme(name)
        if sch.needs_calibration:
            with pytest.raises(ConfigError, match="needs calibration data"):
                sch.passes(sch.make_config({}), False)
        passes = sch.passes(sch.make_config({}), True)
        assert isinstance(passes[-1], DeadCodeElimination)  # the shared tail
        assert qcompiler.parse_pipeline(qcompiler.pipeline_for(name)) == passes
