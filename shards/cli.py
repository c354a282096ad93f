"""`wit shards write` and `wit audit`: the ground floor's own commands."""
from __future__ import annotations

import json

from wit.shards.options import DefaultsHelp, add_arguments, from_args


def register(sub) -> None:
    from wit.shards.audit import AuditConfig
    from wit.shards.reshard import ReshardConfig

    shards = sub.add_parser("shards", help="final training shards from the curated corpus")
    shards_sub = shards.add_subparsers(dest="shards_command", metavar="COMMAND", required=True)
    w = shards_sub.add_parser(
        "write", formatter_class=DefaultsHelp,
        help="reshard the selected pairs into evenly sized, globally shuffled shards + corpus manifest + index",
        description="Join the crawl manifests with filter verdicts and a balance selection, then write the "
                    "surviving pairs (image bytes unchanged) into evenly sized, globally shuffled shards with a "
                    "corpus manifest per shard and index.json. Running it again resumes.",
    )
    add_arguments(w, ReshardConfig)
    w.set_defaults(run=run_write)

    a = sub.add_parser(
        "audit", formatter_class=DefaultsHelp,
        help="an HTML + JSON report of a pipeline's manifests: funnel, queries, sizes, domains, duplicates",
        description="Read the manifests of every stage found under a pipeline folder with DuckDB and write "
                    "report.html (with PNG plots, opens offline) and report.json.",
    )
    add_arguments(a, AuditConfig)
    a.set_defaults(run=run_audit)


def run_write(args) -> int:
    from wit.shards.reshard import ReshardConfig, reshard

    summary = reshard(from_args(ReshardConfig, args))
    print(json.dumps(summary, indent=2))
    return 0


def run_audit(args) -> int:
    from wit.shards.audit import AuditConfig, audit

    report = audit(from_args(AuditConfig, args))
    print(f"audit report: {report}")
    return 0
