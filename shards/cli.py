"""`wit shards write` and `wit audit`: the ground floor's own commands."""
from __future__ import annotations

import json

from wit.shards.helptext import DefaultsHelp


def register(sub) -> None:
    from wit.shards.reshard import ReshardConfig
    from wit.shards.runner import add_engine_args

    d = ReshardConfig(raw="", out="")
    shards = sub.add_parser("shards", help="final training shards from the curated corpus")
    shards_sub = shards.add_subparsers(dest="shards_command", metavar="COMMAND", required=True)
    w = shards_sub.add_parser(
        "write", formatter_class=DefaultsHelp,
        help="reshard the selected pairs into evenly sized, globally shuffled shards + corpus manifest + index",
        description="Join the crawl manifests with filter verdicts and a balance selection, then write the "
                    "surviving pairs (image bytes unchanged) into evenly sized, globally shuffled shards with a "
                    "corpus manifest per shard and index.json. Running it again resumes.",
    )
    w.add_argument("--raw", required=True, help="folder of crawled shards and their manifests (wit download --out)")
    w.add_argument("--out", required=True, help="output folder, local or s3://")
    w.add_argument("--verdicts", nargs="*", default=[], help="folders of filter verdicts (uid, keep, reason)")
    w.add_argument("--selection", help="folder of balance selections (uid, status, matched), e.g. <balance out>/selection")
    w.add_argument("--shard-size", type=int, default=d.shard_size, help="samples per output shard (the last may be short)")
    w.add_argument("--seed", type=int, default=d.seed, help="seed of the global shuffle")
    add_engine_args(w)
    w.set_defaults(run=run_write)

    a = sub.add_parser(
        "audit", formatter_class=DefaultsHelp,
        help="an HTML + JSON report of a pipeline's manifests: funnel, queries, sizes, domains, duplicates",
        description="Read the manifests of every stage found under a pipeline folder with DuckDB and write "
                    "report.html (with PNG plots, opens offline) and report.json.",
    )
    a.add_argument("root", help="pipeline folder (holds raw/, corpus/, and the filter/curation outputs)")
    a.add_argument("--out", help="report folder (default: <root>/audit)")
    a.set_defaults(run=run_audit)


def run_write(args) -> int:
    from wit.shards.reshard import ReshardConfig, reshard

    cfg = ReshardConfig(raw=args.raw, out=args.out, verdicts=tuple(args.verdicts), selection=args.selection,
                        shard_size=args.shard_size, seed=args.seed, engine=args.engine, workers=args.workers,
                        ray_address=args.ray_address)
    summary = reshard(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def run_audit(args) -> int:
    from wit.shards.audit import AuditConfig, audit

    report = audit(AuditConfig(root=args.root, out=args.out))
    print(f"audit report: {report}")
    return 0
