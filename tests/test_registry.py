"""Device registry and credentials: the CLI, the store, and what the HTTP endpoints accept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.ingest_support import event, running, settings

from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.state import open_state
from vendwatch.state.store import RegistryError


def vw(data_dir: Path, *args: str, input: str | None = None) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, [*args, "--data-dir", str(data_dir)], obj=Env(None, {}), input=input,
                           catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_add_prints_token_once_and_stores_only_a_hash(data_dir: Path) -> None:
    code, out, _ = vw(data_dir, "devices", "add", "VM-0001", "--site", "SITE-1", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["device_id"] == "VM-0001" and doc["token"].startswith("vwd_")
    assert doc["token"].encode() not in (data_dir / "state.db").read_bytes()
    st = open_state(settings(data_dir))
    dev = st.authenticate_device(doc["token"])
    assert dev is not None and dev.device_id == "VM-0001" and dev.site_id == "SITE-1"
    assert st.authenticate_device(doc["token"] + "x") is None


def test_add_refuses_bad_and_duplicate_ids(data_dir: Path) -> None:
    assert vw(data_dir, "devices", "add", "VM-1")[0] == 0
    code, _, err = vw(data_dir, "devices", "add", "VM-1")
    assert code != 0 and "already exists" in err
    code, _, err = vw(data_dir, "devices", "add", "bad id")
    assert code != 0 and "DEVICE_ID" in err
    store = open_state(settings(data_dir))
    try:
        with pytest.raises(RegistryError, match="model contains a NUL"):
            store.add_device("VM-2", "S1", model="X\x00")
    finally:
        store.close()


def test_list_show_disable(data_dir: Path) -> None:
    vw(data_dir, "devices", "add", "VM-1", "--site", "S1", "--serial", "SN-1")
    vw(data_dir, "devices", "add", "VM-2", "--site", "S2")
    code, out, _ = vw(data_dir, "devices", "list", "--json")
    assert code == 0 and [d["device_id"] for d in json.loads(out)] == ["VM-1", "VM-2"]
    code, out, _ = vw(data_dir, "devices", "list", "--site", "S2", "--json")
    assert [d["device_id"] for d in json.loads(out)] == ["VM-2"]
    code, out, _ = vw(data_dir, "devices", "show", "VM-1")
    assert json.loads(out)["serial"] == "SN-1" and json.loads(out)["status"] == "active"
    assert vw(data_dir, "devices", "show", "VM-9")[0] != 0
    assert vw(data_dir, "devices", "disable", "VM-1")[0] == 0
    assert json.loads(vw(data_dir, "devices", "show", "VM-1")[1])["status"] == "disabled"
    assert vw(data_dir, "devices", "disable", "VM-9")[0] != 0


def test_import_csv(data_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "fleet.csv"
    f.write_text("device_id,site_id,serial,heartbeat_interval_s\nVM-1,S1,SN1,60\nVM-2,S1,,\n")
    code, out, err = vw(data_dir, "devices", "import", str(f))
    assert code == 0, err
    rows = out.strip().splitlines()
    assert rows[0] == "device_id,token" and len(rows) == 3
    st = open_state(settings(data_dir))
    for line in rows[1:]:
        did, tok = line.split(",")
        dev = st.authenticate_device(tok)
        assert dev is not None and dev.device_id == did
    assert st.get_device("VM-1").heartbeat_interval_s == 60  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("site_id\nS1\n", "device_id column"),
        ("device_id,colour\nVM-1,red\n", "unknown CSV column"),
        ("device_id\nVM-1\nbad id\n", "line 3"),
        ("device_id\nVM-1\nVM-1\n", "appears twice"),
        ("device_id,heartbeat_interval_s\nVM-1,soon\n", "heartbeat_interval_s"),
        ("device_id\nVM-NEW\nVM-OLD\n", "already exists"),
        ("device_id,serial\nVM-NEW,SN\x001\n", "NUL (U+0000)"),  # PostgreSQL text cannot hold it
    ],
)
def test_import_is_validated_and_atomic(data_dir: Path, tmp_path: Path, text: str, needle: str) -> None:
    vw(data_dir, "devices", "add", "VM-OLD")
    f = tmp_path / "fleet.csv"
    f.write_text(text)
    code, out, err = vw(data_dir, "devices", "import", str(f))
    assert code != 0 and needle in err
    assert "vwd_" not in out, "no token printed for a failed import"
    ids = [d["device_id"] for d in json.loads(vw(data_dir, "devices", "list", "--json")[1])]
    assert ids == ["VM-OLD"], "nothing imported"


def test_rotation_keeps_old_token_for_the_grace_period(data_dir: Path) -> None:
    now = [1_000_000.0]
    st = open_state(settings(data_dir))
    st.clock = lambda: now[0]
    old = st.add_device("VM-1")
    new = st.rotate_device_token("VM-1", grace_s=600)
    assert st.authenticate_device(old) is not None and st.authenticate_device(new) is not None
    now[0] += 599
    assert st.authenticate_device(old) is not None
    now[0] += 2
    assert st.authenticate_device(old) is None
    assert st.authenticate_device(new) is not None
    # a second rotation never extends an older token's life
    newer = st.rotate_device_token("VM-1", grace_s=10_000)
    assert st.authenticate_device(old) is None
    assert st.authenticate_device(newer) is not None
    with pytest.raises(RegistryError):
        st.rotate_device_token("VM-404")


def test_rotate_and_disable_over_http(data_dir: Path) -> None:
    with running(data_dir, **{"ingest.auth_cache_s": 0}) as h:
        old = h.add_device("VM-1")
        code, out, _ = vw(data_dir, "devices", "rotate-secret", "VM-1", "--grace", "3600", "--json")
        new = json.loads(out)["token"]
        for tok in (old, new):
            assert h.post("VM-1", [event("VM-1")], token=tok).status_code == 200
        newest = json.loads(vw(data_dir, "devices", "rotate-secret", "VM-1", "--grace", "0", "--json")[1])["token"]
        assert h.post("VM-1", [event("VM-1")], token=old).status_code == 401
        assert h.post("VM-1", [event("VM-1")], token=new).status_code == 401
        assert h.post("VM-1", [event("VM-1")], token=newest).status_code == 200
        vw(data_dir, "devices", "disable", "VM-1")
        assert h.post("VM-1", [event("VM-1")], token=newest).status_code == 401
        vw(data_dir, "devices", "enable", "VM-1")
        assert h.post("VM-1", [event("VM-1")], token=newest).status_code == 200


def test_operator_roles_and_token_kinds(data_dir: Path) -> None:
    with running(data_dir) as h:
        dev_token = h.add_device("VM-1")
        tokens = {}
        for role in ("viewer", "operator", "admin"):
            code, out, _ = vw(data_dir, "tokens", "add", f"{role}-1", "--role", role, "--json")
            assert code == 0
            tokens[role] = json.loads(out)["token"]
        for tok in tokens.values():
            assert h.client.get("/v1/devices", headers={"authorization": f"Bearer {tok}"}).status_code == 200
            # operator tokens never post events
            assert h.post("VM-1", [event("VM-1")], token=tok).status_code == 401
        # device tokens never open operator endpoints
        r = h.client.get("/v1/devices", headers={"authorization": f"Bearer {dev_token}"})
        assert r.status_code == 401
        assert h.client.get("/v1/devices").status_code == 401
        assert h.client.get("/v1/devices/VM-1", headers={"authorization": f"Bearer {tokens['viewer']}"}).json()[
            "device_id"] == "VM-1"
        vw(data_dir, "tokens", "revoke", "admin-1")
        assert h.client.get("/v1/devices", headers={"authorization": f"Bearer {tokens['admin']}"}).status_code == 401
        code, out, _ = vw(data_dir, "tokens", "list")
        assert "viewer-1" in out and tokens["viewer"] not in out


def test_role_order_and_unknown_role(data_dir: Path) -> None:
    st = open_state(settings(data_dir))
    tok = st.add_operator_token("op", "operator")
    p = st.authenticate_operator(tok)
    assert p is not None and p.can("viewer") and p.can("operator") and not p.can("admin")
    with pytest.raises(RegistryError):
        st.add_operator_token("x", "root")
    assert vw(data_dir, "tokens", "add", "y", "--role", "root")[0] != 0


def test_require_refuses_a_lower_role_with_403(data_dir: Path) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Route
    from tests.ingest_support import serve_app

    from vendwatch.api.auth import json_response, require
    from vendwatch.runtime import Context

    ctx = Context(settings(data_dir))
    viewer = ctx.state.add_operator_token("v", "viewer")
    admin = ctx.state.add_operator_token("a", "admin")

    @require(ctx, "admin")
    async def danger(request):  # type: ignore[no-untyped-def]
        return json_response({"ok": True, "by": request.state.principal.name})

    with serve_app(Starlette(routes=[Route("/danger", danger)])) as url:
        r = httpx.get(url + "/danger", headers={"authorization": f"Bearer {viewer}"})
        assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
        assert httpx.get(url + "/danger", headers={"authorization": f"Bearer {admin}"}).json() == {"ok": True, "by": "a"}
    ctx.close()
