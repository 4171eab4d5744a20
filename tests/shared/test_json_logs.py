"""One logging set-up: JSON lines or text as the settings say, every line in a job's context naming the job."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from styleq.shared.adapters.logs import configure_logging, in_this_context, log_context, uses_json
from styleq.shared.adapters.settings import Settings

log = logging.getLogger("styleq.test")


@pytest.fixture
def styleq_logging():
    """Configure logging for a test, and take its handler off the root logger afterwards."""
    root = logging.getLogger()
    level = root.level
    handlers: list[logging.Handler] = []

    def configure(settings: Settings, static_fields=None) -> None:
        handlers.append(configure_logging(settings, static_fields))

    yield configure
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_carry_the_job_fields_while_the_context_is_open(styleq_logging, capsys):
    styleq_logging(Settings(log_format="json"), {"worker": "gpu0@host"})

    log.info("before")
    with log_context(job_id="j1", attempt=2):
        log.info("about %s", "j1")
        with log_context(job_id="j2"):
            log.warning("about j2")
        log.info("about j1 again", extra={"iteration": 7})
    log.info("after")

    before, about, nested, again, after = lines(capsys.readouterr().err)
    assert before == {
        "time": before["time"],
        "level": "INFO",
        "logger": "styleq.test",
        "process": before["process"],
        "message": "before",
        "worker": "gpu0@host",
    }
    assert (about["message"], about["job_id"], about["attempt"]) == ("about j1", "j1", 2)
    assert (nested["level"], nested["job_id"], nested["attempt"]) == ("WARNING", "j2", 2)
    assert (again["job_id"], again["iteration"]) == ("j1", 7)
    assert "job_id" not in after and after["worker"] == "gpu0@host"


def test_a_traceback_stays_inside_its_json_line(styleq_logging, capsys):
    styleq_logging(Settings(log_format="json"))
    try:
        raise ValueError("bad picture")
    except ValueError:
        log.exception("job failed")

    (line,) = lines(capsys.readouterr().err)
    assert line["message"] == "job failed" and "ValueError: bad picture" in line["exc_info"]


def test_text_lines_end_with_the_job_fields_and_the_level_is_a_setting(styleq_logging, capsys):
    styleq_logging(Settings(log_format="text", log_level="warning"))

    with log_context(job_id="j1", worker="gpu0@host", attempt=1):
        log.info("not shown")
        log.warning("slow checkpoint")

    (line,) = capsys.readouterr().err.splitlines()
    assert " WARNING styleq.test " in line and line.endswith("slow checkpoint [job_id=j1 worker=gpu0@host attempt=1]")


def test_auto_is_json_unless_standard_error_is_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert uses_json(Settings(log_format="auto"), io.StringIO())
    assert not uses_json(Settings(log_format="auto"), Terminal())
    assert uses_json(Settings(log_format="json"), Terminal()) and not uses_json(Settings(log_format="text"), io.StringIO())


def test_configuring_again_replaces_the_handler_and_the_environment_sets_format_and_level(styleq_logging, capsys, monkeypatch):
    monkeypatch.setenv("STYLEQ_LOG_FORMAT", "JSON")
    monkeypatch.setenv("STYLEQ_LOG_LEVEL", "debug")
    settings = Settings()
    styleq_logging(settings)
    styleq_logging(settings)

    log.debug("once")

    assert [line["message"] for line in lines(capsys.readouterr().err)] == ["once"]


def test_a_thread_started_in_a_job_context_logs_in_it(styleq_logging, capsys):
    styleq_logging(Settings(log_format="json"))

    with log_context(job_id="j1"):
        thread = threading.Thread(target=in_this_context(lambda: log.info("heartbeat")))
    thread.start()
    thread.join()

    (line,) = lines(capsys.readouterr().err)
    assert line["job_id"] == "j1"
