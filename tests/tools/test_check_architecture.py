"""tools/check_architecture.py on small packages written here: each rule is found where
it is broken (upward import, cycle, unmarked function-level import, sizes), and a package
that keeps them gives no finding."""

import importlib.util
import textwrap

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "check_architecture", ROOT / "tools" / "check_architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_package(root, files):
    package = root / "keras_siglip2"
    for rel, text in {"__init__.py": "", **files}.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != package and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("")
        path.write_text(textwrap.dedent(text))
    return str(package)


CLEAN = {
    "layers/dense.py": "import keras\n",
    "models/tower.py": "from keras_siglip2.layers import dense\n",
    "preset_registry.py": "NAMES = ['a']\n",
    "training/run.py": """\
        from keras_siglip2.models import tower
        from keras_siglip2 import presets


        def train():
            import tensorflow  # lazy: optional heavy dependency
            return tower, presets, tensorflow
        """,
    "cli.py": "from keras_siglip2.training import run\n",
}


def test_clean_package_has_no_finding(tool, tmp_path):
    assert tool.check(write_package(tmp_path, CLEAN)) == []


def test_upward_lazy_import_and_cycle_are_found(tool, tmp_path):
    files = dict(CLEAN)
    files["models/tower.py"] = """\
        from keras_siglip2.layers import dense


        def build():
            from keras_siglip2.presets import NAMES
            return dense, NAMES
        """
    files["presets.py"] = "from keras_siglip2.models import tower\n"
    findings = tool.check(write_package(tmp_path, files))
    assert any("models/tower.py:5" in f and "upward" in f for f in findings), findings
    assert any("models/tower.py:5" in f and "inside a function" in f for f in findings)
    cycles = [f for f in findings if f.startswith("import cycle")]
    assert len(cycles) == 1 and "keras_siglip2.presets" in cycles[0], findings
    assert "keras_siglip2.models.tower" in cycles[0]


def test_unmarked_third_party_lazy_import_and_sizes(tool, tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(30))
    files = dict(CLEAN)
    files["training/run.py"] = f"def train():\n    import numpy\n{body}\n    return numpy\n"
    findings = tool.check(write_package(tmp_path, files), max_module_lines=20,
                          max_function_lines=25)
    assert "training/run.py:2: function-level import without '# lazy: <reason>' comment" in findings
    assert "training/run.py: 33 lines (limit 20)" in findings
    assert "training/run.py:1: function train has 33 lines (limit 25)" in findings
    assert len(findings) == 3, findings


def test_unknown_package_part_is_named(tool, tmp_path):
    with pytest.raises(KeyError, match="'gadgets' has no layer"):
        tool.check(write_package(tmp_path, {"gadgets/thing.py": "X = 1\n"}))
