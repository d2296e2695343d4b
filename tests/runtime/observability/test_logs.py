"""Logs: timestamped, levelled lines, as text or JSON objects carrying the request id; the
access log and its switch; the `observability` config section's checks."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from runtime.cluster import ConfigError, parse_cluster_config
from runtime.observability import ObservabilityConfig, configure_logging, request_id_scope
from runtime.observability.logs import ACCESS_LOGGER, log_access

ISO_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def logged():
    """Configure logging into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger(ACCESS_LOGGER).disabled)
    buffer = io.StringIO()

    def configure(**fields) -> io.StringIO:
        configure_logging(ObservabilityConfig(**fields), stream=buffer)
        return buffer

    yield configure
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger(ACCESS_LOGGER).disabled = saved[2]


def lines(buffer: io.StringIO) -> list[str]:
    return buffer.getvalue().splitlines()


def test_json_lines_carry_timestamp_level_logger_and_request_id(logged):
    buffer = logged(log_format="json", log_level="debug")
    log = logging.getLogger("tandem.test")
    with request_id_scope("req-7f3a"):
        log.warning("KV handoff of %s failed", "req-7f3a")
    log.debug("outside any request")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("step failed")
    inside, outside, failed = (json.loads(line) for line in lines(buffer)[:3])
    assert ISO_UTC_MS.match(inside["timestamp"]), inside
    assert {k: inside[k] for k in ("level", "logger", "message", "request_id")} == {
        "level": "WARNING",
        "logger": "tandem.test",
        "message": "KV handoff of req-7f3a failed",
        "request_id": "req-7f3a",
    }
    assert outside["level"] == "DEBUG" and "request_id" not in outside
    assert failed["level"] == "ERROR" and "RuntimeError: boom" in failed["exception"]


def test_text_lines_are_timestamped_and_levelled_and_the_level_filters(logged):
    buffer = logged(log_format="text", log_level="warning")
    log = logging.getLogger("tandem.test")
    log.info("dropped: below the level")
    with request_id_scope("cmpl-1"):
        log.error("worker prefill-0 lost")
    (line,) = lines(buffer)
    stamp, rest = line.split(" ", 1)
    assert ISO_UTC_MS.match(stamp)
    assert rest == "ERROR tandem.test [cmpl-1] worker prefill-0 lost"


def test_access_log_fields_and_switch(logged):
    buffer = logged(log_format="json")
    with request_id_scope("r1"):
        log_access("http", "POST", "/v1/completions", 200, started=0.0, client="127.0.0.1:5")
    (entry,) = map(json.loads, lines(buffer))
    assert entry["logger"] == ACCESS_LOGGER and entry["request_id"] == "r1"
    assert (entry["protocol"], entry["method"], entry["path"], entry["status"]) == (
        "http",
        "POST",
        "/v1/completions",
        200,
    )
    assert entry["duration_ms"] > 0 and entry["client"] == "127.0.0.1:5"

    buffer = logged(log_format="json", access_log=False)
    before = len(lines(buffer))
    log_access("grpc", "POST", "/tandem.v1.Tandem/Generate", "OK", started=0.0)
    logging.getLogger("tandem.test").warning("still logged")
    assert [json.loads(x)["message"] for x in lines(buffer)[before:]] == ["still logged"]


def test_reconfiguring_replaces_its_own_handler_only(logged):
    buffer = logged(log_format="json")
    logged(log_format="json")
    logging.getLogger("tandem.test").warning("once")
    assert len(lines(buffer)) == 1


@pytest.mark.parametrize(
    "section,message",
    [
        ({"log_format": "xml"}, "log_format must be one of ('text', 'json'), got 'xml'"),
        ({"log_level": "trace"}, "log_level must be one of"),
        ({"otlp_traces_endpoint": " "}, "otlp_traces_endpoint must be a URL"),
        ({"access_logs": False}, "observability.access_logs: Unexpected keyword argument"),
    ],
)
def test_bad_observability_section_is_named(section, message):
    data = {"pools": {"colocated": {"replicas": 1}}, "observability": section}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_cluster_config(data, resolve_model=lambda path: "/models/tiny")


def test_observability_section_reaches_the_cluster_config():
    data = {
        "pools": {"colocated": {"replicas": 1}},
        "observability": {"log_format": "json", "otlp_traces_endpoint": "http://collector:4317"},
    }
    config = parse_cluster_config(data, resolve_model=lambda path: "/models/tiny")
    assert config.observability == ObservabilityConfig(
        log_format="json", otlp_traces_endpoint="http://collector:4317"
    )


def test_serve_flags_override_the_observability_section(tmp_path, capsys):
    from runtime.cli import build_parser, main
    from runtime.serve_cli import flag_overrides

    args = build_parser().parse_args(
        [
            "serve",
            "--config",
            "c.yaml",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--disable-access-log",
            "--otlp-traces-endpoint",
            "http://collector:4317",
        ]
    )
    assert flag_overrides(args)["observability"] == {
        "log_format": "json",
        "log_level": "debug",
        "access_log": False,
        "otlp_traces_endpoint": "http://collector:4317",
    }
    assert "observability" not in flag_overrides(
        build_parser().parse_args(["serve", "--config", "c"])
    )
    # Through the whole path: the file's section under the flags, as --print-config shows it.
    config = tmp_path / "cluster.yaml"
    config.write_text("pools: {colocated: {replicas: 1}}\nobservability: {log_format: json}\n")
    argv = ["serve", "--config", str(config), "--disable-access-log", "--print-config"]
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger(ACCESS_LOGGER).disabled)
    try:
        assert main(argv) == 0
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger(ACCESS_LOGGER).disabled = saved[2]
    shown = capsys.readouterr().out
    assert "observability:\n  log_format: json\n  log_level: info\n  access_log: false\n" in shown
