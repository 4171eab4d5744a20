"""The OpenAPI document matches the routes, and the API stays free of torch and the worker."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.api.support import REPO, add_job, signed_in


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
    # Every route of the API describes itself (api/documented.py); the dashboard's pages are for browsers.
    undescribed = sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if not rule.endpoint.startswith("dashboard.") and not hasattr(app.view_functions[rule.endpoint], "openapi")
    )
    assert undescribed == []

    assert document["openapi"].startswith("3.1")
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer" and document["security"] == [{"bearer": []}]
    assert document_operations(document) == route_operations(app)
    assert {path for path, _ in route_operations(app) if path.startswith("/v1/")} == {
        path for path in document["paths"] if path.startswith("/v1/")
    }


def test_openapi_document_gives_every_operation_responses_and_path_parameters(client):
    document = client.get("/openapi.json").get_json()

    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["summary"] and operation["responses"], (path, method)
            named = {parameter["name"] for parameter in operation.get("parameters", []) if parameter["in"] == "path"}
            assert named == set(re.findall(r"{(\w+)}", path)), (path, method)
            if path.startswith("/v1/"):
                assert {"401", "429"} <= set(operation["responses"]), (path, method)
    assert document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == [
        "content",
        "style",
    ]
    submit = document["paths"]["/v1/jobs"]["post"]["responses"]
    assert "idempotency_key_reused" in submit["422"]["description"]
    assert "too_many_active_jobs" in submit["429"]["description"] and "Retry-After" in submit["429"]["headers"]
    assert "Retry-After" in document["components"]["responses"]["TooManyRequests"]["headers"]


def test_importing_api_leaves_out_torch_and_the_worker():
    code = "import sys, styleq.api; styleq.api.create_app; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith('styleq.worker')))"

    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)

    assert result.stdout.strip() == "[]"


def test_the_csrf_header_the_document_names_is_the_one_the_api_requires(app, client, keys):
    document = client.get("/openapi.json").get_json()
    refusal = document["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]["403"]["description"]
    header = re.search(r"without the ([\w-]+) header", refusal).group(1)
    browser = signed_in(app, keys, "alice")
    first, second = (add_job(app, keys.ids["alice"]) for _ in range(2))

    assert browser.post(f"/v1/jobs/{first}/cancel").status_code == 403
    assert browser.post(f"/v1/jobs/{second}/cancel", headers={header: "styleq-dashboard"}).status_code == 202


def test_every_documented_integer_bound_is_where_the_api_starts_refusing(app, client, keys):
    """Each integer parameter's documented minimum and maximum are the last values the API takes; none is left out."""
    document = client.get("/openapi.json").get_json()
    job_id = add_job(app, keys.ids["alice"], status="succeeded")
    auth = {"Authorization": f"Bearer {keys.alice}"}
    probed = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            streams = "text/event-stream" in operation["responses"].get("200", {}).get("content", {})
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                if parameter["in"] not in ("query", "header") or schema.get("type") != "integer" or method != "get":
                    continue

                def status(value: int, parameter=parameter, path=path) -> int:
                    url = path.replace("{job_id}", job_id)
                    if parameter["in"] == "query":
                        return client.get(url, query_string={parameter["name"]: str(value)}, headers=auth).status_code
                    return client.get(url, headers={**auth, parameter["name"]: str(value)}).status_code

                name = (path, parameter["name"])
                assert "minimum" in schema, name
                assert status(schema["minimum"] - 1) == 400, name
                # An event stream that was let through would stay open: only the refusals are probed there.
                if not streams:
                    assert status(schema["minimum"]) == 200, name
                    if "maximum" in schema:
                        assert (status(schema["maximum"]), status(schema["maximum"] + 1)) == (200, 400), name
                    else:
                        assert status(10**15) == 200, name
                probed.append(name)
    assert {("/v1/jobs/{job_id}/checkpoints", "after"), ("/v1/jobs/{job_id}/events", "Last-Event-ID")} <= set(probed)
