"""A transfer parameter added in one place, a field of TransferParams with its spec, appears checked in every surface:
the API (and its OpenAPI document), the command line, the new-job form and the job page."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
from flask import Flask

from styleq.shared.domain import params as params_module
from styleq.shared.domain.params import Spec, TransferParams, param
from tests.api.support import Keys, assert_error, first_group, signed_in, submit

# The one place, as a module adding a parameter would write it: a field with its spec (here on a subclass, which the
# fixture puts where TransferParams is looked up).
GLOW = """
from dataclasses import dataclass
from styleq.shared.domain import params
from styleq.shared.domain.params import Spec, TransferParams, param

@dataclass(frozen=True)
class WithGlow(TransferParams):
    glow: float = param(Spec("Glow", "How much the picture glows.", low=0.0, high=1.0, form="more", hint="A test's parameter"), 0.5)

params.TransferParams = WithGlow
"""


@dataclass(frozen=True)
class WithGlow(TransferParams):
    glow: float = param(Spec("Glow", "How much the picture glows.", low=0.0, high=1.0, form="more", hint="A test's parameter"), 0.5)


@pytest.fixture
def glow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params_module, "TransferParams", WithGlow)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.usefixtures("glow")
def test_the_api_describes_checks_and_keeps_the_new_parameter(app: Flask, keys: Keys):
    client = app.test_client()
    document = client.get("/openapi.json").get_json()
    described = document["components"]["schemas"]["TransferParams"]["properties"]["glow"]

    assert described == {"type": "number", "minimum": 0.0, "maximum": 1.0, "description": "How much the picture glows.", "default": 0.5}
    refused = assert_error(submit(client, auth(keys.alice), params=json.dumps({"glow": 2})), 422, "invalid_params")
    assert refused["message"] == "glow must be a number from 0 to 1, got 2"
    accepted = submit(client, auth(keys.alice), params=json.dumps({"glow": 0.7}))
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    assert accepted.get_json()["params"]["glow"] == 0.7


@pytest.mark.usefixtures("glow")
def test_the_form_offers_the_new_parameter_and_the_job_page_shows_it_in_words(app: Flask, keys: Keys):
    client = signed_in(app, keys, "alice")
    form = client.get("/jobs/new").get_data(as_text=True)
    more = first_group(r"<summary>More settings</summary>(.*?)</details>", form, re.S)
    field = first_group(r'(<input id="glow"[^>]*>)', more)

    assert '<label for="glow">Glow</label>' in more and 'min="0"' in field and 'max="1"' in field and 'value="0.5"' in field
    assert "0 to 1: A test&#39;s parameter" in more
    sent = json.loads(html.unescape(first_group(r'<script id="form-data" type="application/json">(.*?)</script>', form, re.S)))
    assert {"name": "glow", "control": "number"}.items() <= next(field for field in sent["fields"] if field["name"] == "glow").items()
    job = submit(client, auth(keys.alice), params=json.dumps({"glow": 0.25})).get_json()
    page = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert "<tr><td>Glow</td><td>0.25</td></tr>" in page


def test_the_command_line_offers_and_checks_the_new_parameter(tmp_path):
    # In a process of its own (one, as the command line imports torch), the parameter added before the command line is
    # imported, as it would be in the code; each command runs in click's runner there.
    content, style, out = tmp_path / "content.png", tmp_path / "style.png", tmp_path / "out.png"
    for path in (content, style):
        path.write_bytes(b"not read: the options are checked first")
    commands = [
        ["transfer", "--help"],
        ["transfer", str(content), str(style), "-o", str(out), "--glow", "2"],
        ["submit", "--help"],
    ]
    code = GLOW + (
        "import json\nfrom click.testing import CliRunner\nfrom styleq.cli import main\n"
        f"ran = [CliRunner().invoke(main, command) for command in {commands!r}]\n"
        "print(json.dumps([(result.exit_code, result.output) for result in ran]))"
    )
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert said.returncode == 0, said.stderr
    (help_code, shown), (refused_code, refused), (submit_code, submit_help) = json.loads(said.stdout)

    assert help_code == 0 and re.search(r"--glow FLOAT\s+How much the picture glows\. \(0 to 1\)", shown), shown
    assert refused_code == 2 and "glow must be a number from 0 to 1, got 2.0" in refused, refused
    assert not out.exists()
    assert submit_code == 0 and "--glow FLOAT" in submit_help
