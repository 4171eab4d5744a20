"""The xdist groups of `--dist loadgroup`: one per deployment of real processes, so each starts once and they start side by side."""

from __future__ import annotations

import pytest

# The fixtures that start a deployment of real processes (module- or session-scoped), by name.
DEPLOYMENTS = ("drill", "service", "deployment", "live", "api_address", "image")


def parameter_id(definition: pytest.FixtureDef[object], index: int) -> str:
    """Name a parametrised fixture's parameter as the test ids do: its `pytest.param(id=...)`, else a plain value, else its position."""
    assert definition.params is not None, "only a parametrised fixture's callspec names it"
    parameter = definition.params[index]
    if given := getattr(parameter, "id", None):
        return str(given)
    return str(parameter) if isinstance(parameter, (str, int)) else str(index)


def deployment_group(item: pytest.Item) -> str | None:
    """Name the deployment a test runs against: its fixture's definition, and its backend where the fixture is parametrised."""
    for name in DEPLOYMENTS:
        definitions = item._fixtureinfo.name2fixturedefs.get(name) if name in item.fixturenames else None  # type: ignore[attr-defined]  # pytest keeps a test's fixture definitions only here
        if definitions and definitions[-1].scope in ("module", "session"):
            callspec = getattr(item, "callspec", None)
            backend = (
                f":{parameter_id(definitions[-1], callspec.indices[name])}" if callspec is not None and name in callspec.indices else ""
            )
            # A module-scoped fixture starts one deployment per test module, wherever it is defined (the drill modules
            # share tests/integration's `drill`); a session-scoped one, one per definition: the defining conftest's
            # folder or test module (tests/browser and tests/integration/test_monitoring.py both name theirs `deployment`).
            where = item.nodeid.partition("::")[0] if definitions[-1].scope == "module" else definitions[-1].baseid
            group = f"{where}::{name}{backend}"
            # xdist reads the group after the last '@' of a node id only when no ']' follows it.
            assert "@" not in group and "]" not in group, f"xdist cannot read the group name {group!r}"
            return group
    return None


# First: xdist's own hook writes each test's group into its node id, and reads only the markers already there.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests of one deployment in one xdist group, so it starts once; each deployment (each backend too) in its own, so they start side by side."""
    for item in items:
        group = deployment_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
