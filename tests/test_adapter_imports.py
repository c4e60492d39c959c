"""The adapters reach sources and storage only through handlers: no imports of bot.sources or storage."""

import ast
from pathlib import Path

ADAPTERS = Path(__file__).resolve().parent.parent / "bot" / "adapters"
FORBIDDEN = ("bot.sources", "storage")


def imported_modules(source: str, package: str) -> set[str]:
    """Every module a file imports, relative imports resolved against `package` (e.g. bot.adapters)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from .. import sources`
    return found


def forbidden(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)}


def test_the_checker_sees_every_way_of_importing():
    for source in ("from ..sources.ids import canonical_arxiv_id", "from .. import sources", "import storage",
                   "from storage.store import Store", "import bot.sources.arxiv", "from bot.sources import ids",
                   "def f():\n    from ..sources import ids"):
        assert forbidden(imported_modules(source, "bot.adapters")), source
    assert not forbidden(imported_modules("from ..models import Card\nimport handlers\nimport storageless",
                                          "bot.adapters"))


def test_adapters_import_nothing_from_sources_or_storage():
    files = sorted(ADAPTERS.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        assert not forbidden(imported_modules(path.read_text(), "bot.adapters")), path.name
