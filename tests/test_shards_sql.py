"""shards.sql: every connection is bounded, spills under the output (never the working directory), quotes names."""
from __future__ import annotations

import pytest

from wit.shards.sql import connect, ident, literal
from wit.shards.storage import WitError


def test_connection_has_a_limit_and_spills_under_the_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    con = connect(memory_limit="64MB", output=str(tmp_path / "out"))
    limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    temp = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    assert limit.replace(" ", "").upper().startswith(("61", "64")) and limit.upper().endswith("MIB")
    assert temp == str(tmp_path / "out" / "_wit" / "duckdb_tmp")
    # a sort much larger than the limit spills there and finishes
    n = con.execute("SELECT count(*) FROM (SELECT md5(i::VARCHAR) AS h FROM range(3000000) t(i) ORDER BY h)").fetchone()[0]
    assert n == 3_000_000
    assert not (tmp_path / ".tmp").exists()


def test_names_and_paths_are_quoted_not_pasted(tmp_path):
    con = connect(output=str(tmp_path))
    for name in ("text-v2", "images.old", "a b", 'q"x', "drop table t; --"):
        con.execute(f"CREATE TEMP TABLE {ident('v_' + name)} AS SELECT 1 AS x")
        assert con.execute(f"SELECT x FROM {ident('v_' + name)}").fetchone() == (1,)
    assert con.execute("SELECT " + literal("it's")).fetchone() == ("it's",)


def test_a_bad_memory_limit_is_one_line(tmp_path):
    with pytest.raises(WitError, match="--memory-limit"):
        connect(memory_limit="lots", output=str(tmp_path))
