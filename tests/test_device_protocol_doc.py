"""docs/device-protocol.md is true: its curl examples run against a real collector and
answer what the doc shows; its event examples validate; the OpenAPI document is valid."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import msgspec
import pytest
from click.testing import CliRunner
from openapi_spec_validator import validate as validate_openapi
from tests.ingest_support import running

from vendwatch import events as ev
from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.ingest.openapi import IngestResult, openapi

DOC = Path(__file__).resolve().parents[1] / "docs" / "device-protocol.md"
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(DOC.read_text())]


def _examples() -> list[dict]:
    out = []
    for lang, text in _blocks():
        doc = json.loads(text) if lang == "json" else None
        if isinstance(doc, dict) and "event_id" in doc and "type" in doc:
            out.append(doc)
    return out


def test_curl_examples_answer_what_the_doc_shows(data_dir: Path) -> None:
    blocks = _blocks()
    pairs = [(blocks[i][1], blocks[i + 1][1]) for i, (lang, _) in enumerate(blocks) if lang == "sh"]
    assert len(pairs) >= 6
    assert all(blocks[i + 1][0] == "json" for i, (lang, _) in enumerate(blocks) if lang == "sh")
    with running(data_dir) as h:
        token = h.add_device("VM-0001", "SITE-1")
        env = {**os.environ, "VW": str(h.client.base_url).rstrip("/"), "TOKEN": token}
        for script, expected in pairs:
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True,
                               text=True, timeout=60, cwd=data_dir)  # files the doc writes stay out of the checkout
            assert r.returncode == 0, f"{script}\n{r.stderr}"
            assert json.loads(r.stdout) == json.loads(expected), script
        stored = h.stored_events()
        assert sorted(e.event_id for e in stored) == ["VM-0001-000001", "VM-0001-000002", "VM-0001-000003"]
        assert [q["code"] for q in h.quarantine()] == ["device_mismatch"]


def test_every_event_type_has_a_valid_example() -> None:
    examples = _examples()
    assert sorted({e["type"] for e in examples}) == sorted(ev.PAYLOADS)
    schema = ev.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for e in examples:
        ev.decode_device_event(msgspec.json.encode(e))  # the collector's own validation
        validator.validate({"events": [e]})  # and the published schema agrees


def test_the_published_schema_refuses_what_the_collector_refuses() -> None:
    validator = jsonschema.Draft202012Validator(ev.json_schema())
    bad = {**_examples()[0], "type": "telemetry", "data": {"cabinet_temp_c": 500}}
    with pytest.raises(msgspec.ValidationError):
        ev.decode_device_event(msgspec.json.encode(bad))
    assert not validator.is_valid({"events": [bad]})
    extra = {**_examples()[0], "firmware": "4.2"}  # the envelope is closed; data is open
    assert not validator.is_valid({"events": [extra]})
    open_data = {**_examples()[0], "data": {"uptime_s": 1, "vendor_field": [1, 2]}}
    assert validator.is_valid({"events": [open_data]})


@pytest.mark.parametrize("type_", sorted(ev.PAYLOADS))
def test_every_payload_field_is_documented(type_: str) -> None:
    text = DOC.read_text()
    section = text.split(f"### {type_}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    for field in ev.PAYLOADS[type_].__struct_fields__:
        assert f"`{field}`" in section, f"{type_}.{field} missing from docs/device-protocol.md"


def test_openapi_is_valid_and_served(data_dir: Path) -> None:
    doc = openapi()
    validate_openapi(doc)
    r = CliRunner().invoke(cli, ["schema", "export", "--openapi"], obj=Env(None, {}))
    assert r.exit_code == 0 and json.loads(r.stdout) == json.loads(msgspec.json.encode(doc))
    with running(data_dir) as h:
        assert h.client.get("/openapi.json").json() == json.loads(msgspec.json.encode(doc))
        token = h.add_device("VM-1")
        res = h.post("VM-1", [{"event_id": "x", "device_id": "VM-2", "type": "heartbeat",
                               "occurred_at": "2020-01-01T00:00:00Z"}], token=token)
        msgspec.convert(res.json(), IngestResult)  # the answer has the documented shape
