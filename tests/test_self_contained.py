"""A clone is self-contained: nothing that the tests, the Makefile, CI, the guides, the
tools or the documentation use names a path outside the repository.

The check is static: it reads each file and flags string literals that climb above the
checkout (`../`), absolute paths other than temporary ones, the sibling `shared/` folder
of the development setup, and `Path(__file__).parents[N]` / `.parent` chains that go
higher than the repository root from where the file lives."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What is read by a test run, CI, `make demo` / `make bench`, or a reader of the docs.
SCANNED = ["tests/**/*.py", "tools/**/*.py", "guides/*", "docs/*.md", "README.md",
           "Makefile", ".ci/run", "pyproject.toml"]

PATTERNS = {
    "climbs above the checkout": re.compile(r"""["'`(\s]\.\./"""),
    "names the development setup's shared/ folder": re.compile(
        r"\bshared/(fixtures|DESIGN|API|hooks)"),
    "absolute path outside /tmp and /dev": re.compile(
        r"""["'`]/(?!tmp\b|dev\b)(work|root|home|opt|usr|mnt|srv|var|etc|data)/"""),
}
PARENTS = re.compile(r"__file__\)\.resolve\(\)\.parents\[(\d+)\]")
PARENT_CHAIN = re.compile(r"__file__\)\.resolve\(\)((?:\.parent)+)\b")


def problems(relative_path, text):
    """(line number, reason) for each place in `text` that names a path outside the
    repository; `relative_path` (posix, from the root) sets how high `parents[N]` may go."""
    depth = len(Path(relative_path).parts) - 1  # parents[depth] is the root
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for reason, pattern in PATTERNS.items():
            if pattern.search(line):
                found.append((number, reason))
        for match in PARENTS.finditer(line):
            if int(match.group(1)) > depth:
                found.append((number, f"parents[{match.group(1)}] leaves the repository"))
        for match in PARENT_CHAIN.finditer(line):
            if match.group(1).count(".parent") > depth + 1:
                found.append((number, "a .parent chain leaves the repository"))
    return found


def scanned_files():
    files = set()
    for pattern in SCANNED:
        files.update(p for p in ROOT.glob(pattern) if p.is_file())
    files.discard(Path(__file__).resolve())  # this file spells the patterns out
    return sorted(files)


def test_nothing_names_a_path_outside_the_repository():
    files = scanned_files()
    assert len(files) > 50  # the globs found the suite, the guides and the docs
    found = []
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{relative}:{line}: {reason}" for line, reason in problems(relative, text)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path, line", [
    ("tests/conftest.py", 'FIXTURES = ROOT.parent / "shared" / "fixtures"  # shared/fixtures'),
    ("tests/conftest.py", 'np.load("../shared/fixtures/big_vision/fixed_b.npz")'),
    ("Makefile", "\tcp /work/shared/fixtures/x.npz tests/"),
    ("README.md", "See `../shared/DESIGN.md` for the layout."),
    ("tests/models/test_x.py", 'ROOT = Path(__file__).resolve().parents[3]'),
    ("tests/test_x.py", 'ROOT = Path(__file__).resolve().parent.parent.parent'),
    ("tests/test_x.py", 'ROOT = Path(__file__).resolve().parents[2]'),
])
def test_the_check_catches_outside_paths(path, line):
    assert problems(path, line)


@pytest.mark.parametrize("path, line", [
    ("tests/models/test_x.py", 'ROOT = Path(__file__).resolve().parents[2]'),
    ("tests/test_x.py", 'ROOT = Path(__file__).resolve().parent.parent'),
    ("tests/test_x.py", 'out = tmp_path / "shared" / "x.npz"'),
    ("tests/test_x.py", 'subprocess.run(["cat", "/tmp/x"])'),
    ("tests/test_x.py", 'FIXTURES = ROOT / "tests" / "fixtures" / "big_vision"'),
])
def test_the_check_passes_inside_paths(path, line):
    assert not problems(path, line)
