"""The OpenAPI document matches the routes, and the API stays free of torch and the worker."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.api.support import REPO


def document_operations(document):
    return {(path, method.upper()) for path, item in document["paths"].items() for method in item}


def route_operations(app):
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("dashboard."):
            continue  # the dashboard's HTML pages are for browsers, not part of the JSON API
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operations.add((path, method))
    return operations


def test_openapi_document_describes_exactly_the_routes(app, client):
    document = client.get("/openapi.json").get_json()

    assert document["openapi"].startswith("3.1")
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and document["security"] == [{"bearer": []}]
    assert document_operations(document) == route_operations(app)
    assert {path for path, _ in route_operations(app) if path.startswith("/v1/")} == {path for path in document["paths"] if path.startswith("/v1/")}


def test_openapi_document_gives_every_operation_responses_and_path_parameters(client):
    document = client.get("/openapi.json").get_json()

    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["summary"] and operation["responses"], (path, method)
            named = {parameter["name"] for parameter in operation.get("parameters", []) if parameter["in"] == "path"}
            assert named == set(re.findall(r"{(\w+)}", path)), (path, method)
            if path.startswith("/v1/"):
                assert {"401", "429"} <= set(operation["responses"]), (path, method)
    assert document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["content", "style"]
    submit = document["paths"]["/v1/jobs"]["post"]["responses"]
    assert "idempotency_key_reused" in submit["422"]["description"]
    assert "too_many_active_jobs" in submit["429"]["description"] and "Retry-After" in submit["429"]["headers"]
    assert "Retry-After" in document["components"]["responses"]["TooManyRequests"]["headers"]


def test_importing_api_leaves_out_torch_and_the_worker():
    code = "import sys, api; api.create_app; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'worker')))"

    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)

    assert result.stdout.strip() == "[]"
