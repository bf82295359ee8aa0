"""The typed [lake] settings section."""

from __future__ import annotations

import re

import pytest

from vendwatch.config import ConfigError, load_settings
from vendwatch.lake.catalog import local_warehouse, warehouse_uri


def test_defaults_and_env_overrides(tmp_path):
    s = load_settings(overrides={"data_dir": str(tmp_path)}, environ={
        "VENDWATCH_LAKE__BATCH_MAX_EVENTS": "5000",
        "VENDWATCH_LAKE__CATALOG__URI": "postgresql+psycopg://vw@127.0.0.1/vw",
        "VENDWATCH_LAKE__CATALOG__WAREHOUSE": "s3://bucket/lake",
    })
    assert s.lake.batch_max_events == 5000
    assert s.lake.catalog.uri == "postgresql+psycopg://vw@127.0.0.1/vw"
    assert warehouse_uri(s) == "s3://bucket/lake" and local_warehouse(s) is None
    assert load_settings(overrides={"data_dir": str(tmp_path)}, environ={}).lake.retention_days["raw.events:log"] == 30.0


def test_default_warehouse_is_under_the_data_dir(tmp_path):
    s = load_settings(overrides={"data_dir": str(tmp_path)}, environ={})
    assert local_warehouse(s) == tmp_path.resolve() / "lake" / "warehouse"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"VENDWATCH_LAKE__BATCH_SIZE": "5"}, "lake: Object contains unknown field `batch_size`"),
        ({"VENDWATCH_LAKE__CATALOG__TYPE": "hive"}, "lake.catalog.type"),
        ({"VENDWATCH_LAKE__SQL_ROW_LIMIT": "0"}, "lake.sql_row_limit: must be > 0"),
        ({"VENDWATCH_LAKE__BATCH_MAX_WAIT_S": "soon"}, "lake.batch_max_wait_s"),
    ],
)
def test_bad_values_name_the_key(env, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings(environ=env)
