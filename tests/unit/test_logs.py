import json
import logging

import pytest

from semlink.runtime.logs import JsonFormatter, configure


def test_json_lines_carry_the_request_fields():
    record = logging.LogRecord(
        "semlink.device.service", logging.INFO, __file__, 1, "request %s", ("r1",), None
    )
    record.request = {"request_id": "r1", "request_bytes": 1800}
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "request r1" and doc["request_id"] == "r1" and doc["request_bytes"] == 1800
    assert doc["level"] == "info" and doc["ts"].endswith("Z")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="'text' or 'json'"):
        configure("INFO", "xml")
