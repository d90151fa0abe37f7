"""The structure rules of the source tree, checked on its text: which package may import which, who may open the
product store's transactions, that no module borrows another's private names, and that no file grows past 500 lines.

Every rule is a small pure function from one `Source` (a path and its parsed syntax tree) to the `Violation`s it
finds, each naming the file and line. The tree tests run every rule over connectors/, learner/, daemon/, deploy/ and
tests/; the unit tests feed each rule a tiny synthetic source that breaks it, so each rule is shown able to fail.

What this file must not do: import the modules it checks (it parses them with `ast`, nothing is executed), or grow
exceptions for today's offenders: a rule that fails names the code to change, not the rule.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED_DIRS = ("connectors", "learner", "daemon", "deploy", "tests")
MAX_LINES = 500
STORE = "connectors/db/store.py"  # the one module that opens `ProductStore._transaction`


@dataclass(frozen=True)
class Source:
    """One Python file: its path relative to the repository root (POSIX separators), its line count and its tree."""

    path: str
    lines: int
    tree: ast.Module

    @classmethod
    def parse(cls, path: str, text: str) -> Source:
        return cls(path, len(text.splitlines()), ast.parse(text, filename=path))

    @property
    def module(self) -> str:
        """The dotted module name: 'learner/review/policy.py' -> 'learner.review.policy' (a package: its name)."""
        parts = self.path.removesuffix(".py").split("/")
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.module if self.path.endswith("/__init__.py") else self.module.rpartition(".")[0]

    def under(self, directory: str) -> bool:
        return self.path.startswith(directory.rstrip("/") + "/")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


Rule = Callable[[Source], list[Violation]]


# -------------------------------------------------------------------------------------------- reading imports


def absolute(source: Source, node: ast.ImportFrom) -> str:
    """The module a `from ... import` names, relative imports resolved against the source's package."""
    if not node.level:
        return node.module or ""
    base = source.package.split(".")
    base = base[: max(0, len(base) - (node.level - 1))]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(source: Source) -> Iterator[tuple[int, str]]:
    """(line, module) for every module an import statement may load, anywhere in the file (functions and
    TYPE_CHECKING blocks included). `from a import b` yields both 'a' and 'a.b', since b may be a submodule."""
    for node in ast.walk(source.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = absolute(source, node)
            yield node.lineno, module
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{module}.{alias.name}"


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def imports_of(source: Source, forbidden: tuple[str, ...], why: str) -> list[Violation]:
    """One violation per import line of `source` that loads a module of a `forbidden` package."""
    found: dict[int, str] = {}
    for line, module in imported_modules(source):
        if line not in found and any(within(module, package) for package in forbidden):
            found[line] = module
    return [Violation(source.path, line, f"imports {module}: {why}") for line, module in sorted(found.items())]


# -------------------------------------------------------------------------------------------- the rules


def review_imports_of_the_database(source: Source) -> list[Violation]:
    """learner/review/ is pure: it works on the shared records (connectors/records.py), never on the database."""
    if not source.under("learner/review"):
        return []
    return imports_of(source, ("connectors.db",), "learner/review must not import the database package")


def evaluation_imports_of_training(source: Source) -> list[Violation]:
    """Training uses evaluation; evaluation must not use training back (no cycle)."""
    if not source.under("learner/evaluation"):
        return []
    return imports_of(source, ("learner.training",), "learner/evaluation must not import learner/training")


def imports_against_the_flow(source: Source) -> list[Violation]:
    """Imports flow daemon -> learner -> connectors, never back."""
    if source.under("connectors"):
        return imports_of(source, ("learner", "daemon"), "connectors must not import learner or daemon")
    if source.under("learner"):
        return imports_of(source, ("daemon",), "learner must not import daemon")
    return []


def transaction_accesses(source: Source) -> list[Violation]:
    """`._transaction` is the product store's private way in; every other module goes through its public API."""
    if source.path == STORE:
        return []
    return [
        Violation(source.path, node.lineno, f"reaches into `._transaction` (only {STORE} may)")
        for node in ast.walk(source.tree)
        if isinstance(node, ast.Attribute) and node.attr == "_transaction"
    ]


def private_name_imports(source: Source) -> list[Violation]:
    """`from x import _y`: a name with one leading underscore is private to its module (dunders are not)."""
    return [
        Violation(source.path, node.lineno, f"imports the private name {alias.name} from {absolute(source, node)}")
        for node in ast.walk(source.tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]


def oversize(source: Source) -> list[Violation]:
    """A file over MAX_LINES lines holds more than one job: split it along its seams."""
    if source.lines <= MAX_LINES:
        return []
    return [Violation(source.path, MAX_LINES + 1, f"{source.lines} lines, over the limit of {MAX_LINES}")]


# -------------------------------------------------------------------------------------------- the tree


@cache
def tree_sources() -> tuple[Source, ...]:
    paths = sorted(p for d in CHECKED_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)
    return tuple(Source.parse(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8")) for p in paths)


def assert_tree_keeps(rule: Rule) -> None:
    violations = [v for source in tree_sources() for v in rule(source)]
    assert not violations, f"{len(violations)} violation(s) of {rule.__name__}:\n" + "\n".join(map(str, violations))


def test_the_rules_read_every_checked_directory() -> None:
    checked = {s.path.split("/")[0] for s in tree_sources()}
    assert checked == set(CHECKED_DIRS)
    assert any(s.path == STORE for s in tree_sources())


def test_no_review_policy_module_imports_the_database_package() -> None:
    assert_tree_keeps(review_imports_of_the_database)


def test_no_evaluation_module_imports_the_training_package() -> None:
    assert_tree_keeps(evaluation_imports_of_training)


def test_imports_flow_from_daemon_to_learner_to_connectors_and_never_back() -> None:
    assert_tree_keeps(imports_against_the_flow)


def test_only_the_product_store_opens_its_own_transactions() -> None:
    assert_tree_keeps(transaction_accesses)


def test_no_module_imports_another_modules_private_names() -> None:
    assert_tree_keeps(private_name_imports)


def test_no_python_file_is_over_500_lines() -> None:
    assert_tree_keeps(oversize)


# -------------------------------------------------------------------------------------------- each rule can fail


def where(violations: list[Violation]) -> list[tuple[str, int]]:
    return [(v.path, v.line) for v in violations]


def test_a_review_module_importing_the_database_in_any_form_is_named_with_its_line() -> None:
    source = Source.parse(
        "learner/review/policy.py",
        "import os\n"
        "from connectors.db.types import AttributeValue\n"
        "from connectors import db\n"
        "import connectors.db.store as store\n"
        "from ..evaluation import report\n"
        "from connectors.records import ProductResult\n",
    )
    assert where(review_imports_of_the_database(source)) == [
        ("learner/review/policy.py", 2),
        ("learner/review/policy.py", 3),
        ("learner/review/policy.py", 4),
    ]
    assert "connectors.db.types" in str(review_imports_of_the_database(source)[0])
    elsewhere = Source.parse("daemon/routing.py", "from connectors.db import ProductStore\n")
    assert review_imports_of_the_database(elsewhere) == []


def test_a_relative_import_of_the_database_from_a_review_module_is_caught() -> None:
    source = Source.parse("learner/review/tasks.py", "from ...connectors.db import outbox\n")
    statement = source.tree.body[0]
    assert isinstance(statement, ast.ImportFrom) and absolute(source, statement) == "connectors.db"
    assert where(review_imports_of_the_database(source)) == [("learner/review/tasks.py", 1)]


def test_an_evaluation_module_importing_training_is_named() -> None:
    source = Source.parse(
        "learner/evaluation/evaluate.py",
        '"""Doc."""\n\ndef run():\n    from learner.training.data import LabelledSet\n    return LabelledSet\n',
    )
    assert where(evaluation_imports_of_training(source)) == [("learner/evaluation/evaluate.py", 4)]
    training = Source.parse("learner/training/train.py", "from learner.evaluation import evaluate\n")
    assert evaluation_imports_of_training(training) == []


def test_imports_against_the_flow_are_named_for_connectors_and_learner() -> None:
    connectors = Source.parse("connectors/db/store.py", "import learner.model\nfrom daemon import config\n")
    assert where(imports_against_the_flow(connectors)) == [("connectors/db/store.py", 1), ("connectors/db/store.py", 2)]
    learner = Source.parse("learner/review/routing.py", "from connectors.records import X\nimport daemon.metrics\n")
    assert where(imports_against_the_flow(learner)) == [("learner/review/routing.py", 2)]
    daemon = Source.parse("daemon/service.py", "import learner\nimport connectors\n")
    assert imports_against_the_flow(daemon) == []
    lookalike = Source.parse("connectors/kafka.py", "import learners_guide\nimport daemonize\n")
    assert imports_against_the_flow(lookalike) == []


def test_a_transaction_opened_outside_the_store_is_named() -> None:
    source = Source.parse(
        "connectors/db/review_store.py",
        "def mark(store):\n    with store._transaction() as tx:\n        return tx\n",
    )
    assert where(transaction_accesses(source)) == [("connectors/db/review_store.py", 2)]
    inside = Source.parse(STORE, "def write(self):\n    with self._transaction() as tx:\n        return tx\n")
    assert transaction_accesses(inside) == []
    mentioned = Source.parse("docs_example.py", 'NOTE = "store._transaction is private"\n')
    assert transaction_accesses(mentioned) == []


def test_importing_a_private_name_is_named_but_dunders_are_not() -> None:
    source = Source.parse(
        "connectors/db/report_view.py",
        "from __future__ import annotations\n"
        "from connectors.db.store import ProductStore, _now\n"
        "from .store import _utc as utc\n"
        "from x import __version__\n",
    )
    violations = private_name_imports(source)
    assert where(violations) == [("connectors/db/report_view.py", 2), ("connectors/db/report_view.py", 3)]
    assert "_utc from connectors.db.store" in str(violations[1])


@pytest.mark.parametrize(("lines", "over"), [(MAX_LINES, False), (MAX_LINES + 1, True)])
def test_a_file_over_500_lines_is_named(lines: int, over: bool) -> None:
    source = Source.parse("tests/deploy/test_big.py", "x = 1\n" * lines)
    assert where(oversize(source)) == ([("tests/deploy/test_big.py", MAX_LINES + 1)] if over else [])
