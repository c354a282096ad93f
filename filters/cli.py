"""`wit queries build`, `wit curate match`, `wit curate balance`: query-based curation (MetaCLIP)."""
from __future__ import annotations


from wit.shards.runner import add_engine_args
from wit.shards.storage import WitError


def register(sub) -> None:
    q = sub.add_parser("queries", help="build the query list (MetaCLIP metadata)")
    qsub = q.add_subparsers(dest="queries_command", metavar="ACTION", required=True)
    b = qsub.add_parser(
        "build",
        help="build a versioned query file from WordNet, unigram/bigram counts, titles and user lists",
        description="Build the query list: WordNet synset head lemmas, unigrams with count >= --min-count, "
        "bigrams with PMI >= --min-pmi, titles with >= --min-views page views, and --extra lists; "
        "case-sensitive, de-duplicated (by tokens), in that priority order, capped at --cap entries. "
        "Writes OUT (parquet: id, entry, source, score) and OUT's .summary.json.",
    )
    b.add_argument("--out", default="data/queries.parquet", help="query file to write (default: %(default)s)")
    b.add_argument("--unigrams", default="wordsegment",
                   help="`word count` file; 'wordsegment' = the counts in the PyPI package; 'none' = skip "
                   "(default: %(default)s)")
    b.add_argument("--bigrams", default="wordsegment",
                   help="`word word count` file; PMI uses --unigrams counts; 'none' = skip (default: %(default)s)")
    b.add_argument("--titles", default="none", help="`title views` file (e.g. Wikipedia page views); 'none' = skip")
    b.add_argument("--wordnet", default="/usr/share/wordnet",
                   help="folder with WordNet's data.noun/verb/adj/adv (Debian wordnet-base); skipped with a "
                   "message when missing; 'none' = skip (default: %(default)s)")
    b.add_argument("--extra", action="append", default=[], help="a user list, one entry a line (repeatable); "
                   "taken first")
    b.add_argument("--min-count", type=int, default=100, help="unigram count threshold (default: %(default)s)")
    b.add_argument("--min-pmi", type=float, default=3.0,
                   help="bigram threshold on ln(P(ab)/(P(a)P(b))) (default: %(default)s)")
    b.add_argument("--min-views", type=int, default=5000, help="title page-view threshold (default: %(default)s)")
    b.add_argument("--budget", action="append", default=[], metavar="SOURCE=N",
                   help="at most N entries from SOURCE (extra, wordnet, unigram, bigram, title); repeatable")
    b.add_argument("--cap", type=int, default=500_000, help="total entries at most (default: %(default)s)")
    b.set_defaults(run=_queries_build)

    c = sub.add_parser("curate", help="match captions against the query list and balance the pool")
    csub = c.add_subparsers(dest="curate_command", metavar="ACTION", required=True)
    m = csub.add_parser(
        "match",
        help="write the matched query ids of every caption",
        description="Whole-token, case-sensitive matching of every caption against every query (Aho-Corasick). "
        "Writes OUT/<index>.parquet (uid, matched, url, caption) per input file and OUT/match.json.",
    )
    m.add_argument("inputs", nargs="+", help="parquet files with uid and caption columns: paths, globs, "
                   "{a..b} patterns or folders; local or s3://")
    m.add_argument("--queries", required=True, help="query file from `wit queries build`")
    m.add_argument("--out", required=True, help="output folder (local or s3://)")
    m.add_argument("--caption-column", default="caption", help="caption column (default: %(default)s)")
    m.add_argument("--uid-column", default="uid", help="uid column (default: %(default)s)")
    add_engine_args(m)
    m.set_defaults(run=_curate_match)

    bal = csub.add_parser(
        "balance",
        help="keep at most about t pairs per query entry (MetaCLIP Algorithm 1)",
        description="Count pairs per entry over all match files (c_e), then keep each pair with probability "
        "1 - prod(1 - min(1, t/c_e)) over its entries, drawn from a hash of (seed, uid). Writes "
        "OUT/selection/*.parquet (every row: status selected|dropped, reason not_in_pool|no_query_match|"
        "not_selected), "
        "OUT/urls/*.parquet (selected rows: uid, url, caption; a URL list for `wit download`), "
        "OUT/entry_counts.parquet, OUT/datacard.json and PNG plots.",
    )
    bal.add_argument("matches", nargs="+", help="match files or folders from `wit curate match`")
    bal.add_argument("--out", required=True, help="output folder (local or s3://)")
    bal.add_argument("--t", type=int, default=20_000,
                     help="pairs per entry to aim for (default: %(default)s; before download use 2-4x)")
    bal.add_argument("--seed", type=int, default=0, help="seed of the per-uid draw (default: %(default)s)")
    bal.add_argument("--verdicts", nargs="+", default=[], metavar="DIR",
                     help="verdict folders (wit filter text/images, wit dedup) with one file per match file: "
                     "pairs a filter dropped are not in the pool, neither counted nor selected (not_in_pool); "
                     "rows whose crawl status is not ok never are. Use them to balance after the filters")
    add_engine_args(bal)
    bal.set_defaults(run=_curate_balance)



def _none(value: str | None) -> str | None:
    return None if value is None or value.lower() == "none" else value


def _queries_build(args) -> int:
    from wit.filters.queries import QueryBuildConfig, build

    budgets = []
    for item in args.budget:
        name, _, n = item.partition("=")
        if not n.isdigit():
            raise WitError(f"--budget {item}: expected SOURCE=N")
        budgets.append((name, int(n)))
    build(QueryBuildConfig(
        out=args.out, unigrams=_none(args.unigrams), bigrams=_none(args.bigrams), titles=_none(args.titles),
        wordnet=_none(args.wordnet), extra=tuple(args.extra), min_count=args.min_count, min_pmi=args.min_pmi,
        min_views=args.min_views, budgets=tuple(budgets), cap=args.cap,
    ))
    return 0


def _curate_match(args) -> int:
    from wit.filters.io import list_parquet
    from wit.filters.match import MatchConfig, run

    run(MatchConfig(
        queries=args.queries, inputs=tuple(list_parquet(args.inputs)), out=args.out, engine=args.engine,
        workers=args.workers, ray_address=args.ray_address, uid_column=args.uid_column,
        caption_column=args.caption_column,
    ))
    return 0


def _curate_balance(args) -> int:
    from wit.filters.balance import BalanceConfig, run
    from wit.filters.io import list_parquet

    run(BalanceConfig(
        matches=tuple(list_parquet(args.matches)), out=args.out, t=args.t, seed=args.seed, engine=args.engine,
        workers=args.workers, ray_address=args.ray_address, verdicts=tuple(args.verdicts),
    ))
    return 0
