"""The copies that only the full tier runs are real tests, each listed in docs/TESTS.md, and the other copy stays in `make test`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.tiers import FULL_TIER_COPIES

REPO = Path(__file__).resolve().parents[1]

NODE_ID = re.compile(r"^(?P<path>tests/[\w/]+\.py)::(?P<name>test_\w+)\[(?P<param>[\w+-]+)\]$")


def parametrised_backends(path: str, name: str) -> bool:
    """Whether `name` is a test function of the module at `path` (its backends come from a parametrised fixture)."""
    module = ast.parse((REPO / path).read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in module.body)


@pytest.mark.parametrize("node_id", sorted(FULL_TIER_COPIES))
def test_each_full_tier_copy_names_a_test_of_its_module_and_says_why(node_id):
    match = NODE_ID.match(node_id)

    assert match, f"{node_id} is not path::test_name[backend]"
    assert parametrised_backends(match["path"], match["name"]), f"{match['path']} has no {match['name']}"
    assert len(FULL_TIER_COPIES[node_id]) > 20, "say why the other copy is enough for make test"


def test_the_tests_page_lists_every_copy_that_only_the_full_tier_runs():
    page = (REPO / "docs" / "TESTS.md").read_text()

    missing = [node_id for node_id in FULL_TIER_COPIES if node_id.split("::", 1)[1] not in page]
    assert not missing, f"docs/TESTS.md does not list {missing}"


def test_no_test_loses_both_of_its_copies_to_the_full_tier():
    by_test: dict[str, list[str]] = {}
    for node_id in FULL_TIER_COPIES:
        by_test.setdefault(node_id.rpartition("[")[0], []).append(node_id)

    assert all(len(copies) == 1 for copies in by_test.values()), by_test
