"""/healthz and /readyz, which need no key."""

from __future__ import annotations

from styleq.api import create_app


def test_healthz_answers_without_touching_anything(client):
    response = client.get("/healthz")

    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_is_200_when_database_and_broker_answer(client):
    response = client.get("/readyz")

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "ok", "checks": {"database": {"ok": True}, "broker": {"ok": True}}}


def test_readyz_is_503_naming_the_broker_when_it_is_down(settings):
    settings.broker_url = "redis://127.0.0.1:1/0"
    app = create_app(settings)
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["styleq"].close()

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == {"ok": True} and body["checks"]["broker"]["ok"] is False


def test_readyz_is_503_naming_the_database_when_it_is_down(tmp_path):
    from styleq.shared.adapters.settings import Settings

    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
    )
    app = create_app(settings)  # builds without connecting
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["styleq"].close()

    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks["database"]["ok"] is False and checks["broker"] == {"ok": True}


def test_every_request_that_needs_the_database_is_503_with_retry_after_while_it_is_down(tmp_path):
    from styleq.shared.adapters.settings import Settings

    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
    )
    app = create_app(settings)
    try:
        client = app.test_client()
        headers = {"Authorization": "Bearer sq_anything"}
        answers = [client.get("/v1/jobs", headers=headers), client.post("/v1/jobs", headers=headers, data={"params": "{}"})]
    finally:
        app.extensions["styleq"].close()

    for response in answers:
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert response.get_json()["error"]["code"] == "database_unavailable"
        assert "127.0.0.1" not in response.get_data(as_text=True)
