"""shards.options: one mechanism turns every command's config into flags, a config-file table, and back."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from wit.filters.balance import BalanceConfig
from wit.filters.dedup import DedupConfig
from wit.filters.images import ImagesConfig
from wit.filters.match import MatchConfig
from wit.filters.queries import QueryBuildConfig
from wit.filters.text import TextConfig
from wit.ingest.config import DownloadConfig
from wit.shards.audit import AuditConfig
from wit.shards.options import add_arguments, from_args, from_mapping, to_argv
from wit.shards.reshard import ReshardConfig
from wit.shards.storage import WitError
from wit.trainer.config import TrainConfig
from wit.trainer.eval.linear_probe import LinearProbeConfig
from wit.trainer.eval.zeroshot import ZeroShotConfig

EXAMPLES = [
    DownloadConfig(lists=("a.csv", "b.parquet"), out="o", allow_net=("127.0.0.1/32", "10.0.0.0/8"), threads=3,
                   ignore_robots=True, progress=False, timeout=2.5),
    TextConfig(inputs=("x/*.parquet",), out="v", english=False, workers=2, engine="ray"),
    ImagesConfig(raw="r", out="v", eval_sets=("e1", "e2"), eval_k=2),
    DedupConfig(images="i", out="o", near_k=0, after=("t",), memory_limit="2GB", temp_dir="/tmp/x"),
    QueryBuildConfig(out="q.parquet", wordnet=None, budgets=(("unigram", 5), ("bigram", 7)), extra=("e.txt",)),
    MatchConfig(inputs=("p",), queries="q.parquet", out="m"),
    BalanceConfig(matches=("m",), out="b", t=5, verdicts=("v1", "v2")),
    ReshardConfig(raw="r", out="c", verdicts=("v",), selection="s", shard_size=7),
    AuditConfig(root="p", top=3),
    TrainConfig(data="s3://b/{0..3}.tar", steps=7, lr=0.1, log_samples=True, tensorboard=False),
    ZeroShotConfig(data="d", prompts="imagenet", random_init=True, limit=5),
    LinearProbeConfig(train="a", test="b", c_steps=3),
]


@pytest.mark.parametrize("cfg", EXAMPLES, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_its_flags_and_a_table(cfg):
    parser = add_arguments(argparse.ArgumentParser(), type(cfg))
    assert from_args(type(cfg), parser.parse_args(to_argv(cfg))) == cfg
    table = {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v)
             for f in dataclasses.fields(cfg) if f.metadata.get("wit.option", {}).get("cli", True)}
    table = {k: [("=".join(map(str, x)) if isinstance(x, tuple) else x) for x in v] if isinstance(v, list) else v
             for k, v in table.items()}
    assert from_mapping(type(cfg), table, "t.toml [x]") == cfg


def test_a_config_file_table_is_checked_key_by_key():
    with pytest.raises(WitError, match=r"t.toml \[dedup\]: unknown key 'near_kk'"):
        from_mapping(DedupConfig, {"images": "i", "out": "o", "near_kk": 2}, "t.toml [dedup]")
    with pytest.raises(WitError, match=r"\[dedup\]: near_k: expected an integer, got 'two'"):
        from_mapping(DedupConfig, {"images": "i", "out": "o", "near_k": "two"}, "t.toml [dedup]")
    with pytest.raises(WitError, match=r"exact: 'md5' is not one of phash, sha256"):
        from_mapping(DedupConfig, {"images": "i", "out": "o", "exact": "md5"}, "t.toml [dedup]")
    with pytest.raises(WitError, match=r"out is required"):
        from_mapping(DedupConfig, {"images": "i"}, "t.toml [dedup]")
    with pytest.raises(WitError, match=r"allow_net: '10\.0\.0' is not an IP network"):
        from_mapping(DownloadConfig, {"lists": ["a"], "allow_net": ["10.0.0"]}, "t.toml [download]")
    with pytest.raises(WitError, match=r"--near-k must be at least 0 \(got -1\)"):
        from_mapping(DedupConfig, {"images": "i", "out": "o", "near_k": -1}, "t.toml [dedup]")


def test_flags_are_checked_the_same_way():
    parser = add_arguments(argparse.ArgumentParser(), DownloadConfig)
    with pytest.raises(WitError, match="--threads must be at least 1"):
        from_args(DownloadConfig, parser.parse_args(["a.csv", "--threads", "0"]))
    with pytest.raises(SystemExit):  # argparse's own one-line error
        parser.parse_args(["a.csv", "--allow-net", "nonsense"])
    assert from_args(DownloadConfig, parser.parse_args(["a.csv", "--ignore-robots"])).header_optouts == ()
    assert "noai" in from_args(DownloadConfig, parser.parse_args(["a.csv"])).header_optouts


def test_configs_cannot_be_built_from_positional_arguments():
    with pytest.raises(TypeError):
        TextConfig(("a",), "out")  # eleven positional values were how TextConfig used to be built
