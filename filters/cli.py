"""`wit queries build`, `wit curate match`, `wit curate balance`: query-based curation (MetaCLIP)."""
from __future__ import annotations

from wit.shards.options import DefaultsHelp, add_arguments, from_args


def register(sub) -> None:
    from wit.filters.balance import BalanceConfig
    from wit.filters.match import MatchConfig
    from wit.filters.queries import QueryBuildConfig

    q = sub.add_parser("queries", help="build the query list (MetaCLIP metadata)")
    qsub = q.add_subparsers(dest="queries_command", metavar="ACTION", required=True)
    b = qsub.add_parser(
        "build", formatter_class=DefaultsHelp,
        help="build a versioned query file from WordNet, unigram/bigram counts, titles and user lists",
        description="Build the query list: WordNet synset head lemmas, unigrams with count >= --min-count, "
        "bigrams with PMI >= --min-pmi, titles with >= --min-views page views, and --extra lists; "
        "case-sensitive, de-duplicated (by tokens), in that priority order, capped at --cap entries. "
        "With --languages, one such list per language (English from these sources, the others from "
        "--lang-unigrams/--lang-bigrams or wordfreq), capped per language. "
        "Writes OUT (parquet: id, entry, source, score, language) and OUT's .summary.json.",
    )
    add_arguments(b, QueryBuildConfig)
    b.set_defaults(run=_queries_build)

    c = sub.add_parser("curate", help="match captions against the query list and balance the pool")
    csub = c.add_subparsers(dest="curate_command", metavar="ACTION", required=True)
    m = csub.add_parser(
        "match", formatter_class=DefaultsHelp,
        help="write the matched query ids of every caption",
        description="Whole-token, case-sensitive matching of every caption against every query (Aho-Corasick), "
        "by MetaCLIP's token rule unless --spacing ascii; with a query list of several languages each caption's "
        "language is identified (langid.py) and it is matched against its language's entries only. "
        "Writes OUT/<index>.parquet (uid, matched, url, caption, language) per input file and OUT/match.json.",
    )
    add_arguments(m, MatchConfig)
    m.set_defaults(run=_curate_match)

    bal = csub.add_parser(
        "balance", formatter_class=DefaultsHelp,
        help="keep at most about t pairs per query entry (MetaCLIP Algorithm 1)",
        description="Count pairs per entry over all match files (c_e), then keep each pair with probability "
        "1 - prod(1 - min(1, t/c_e)) over its entries, drawn from a hash of (seed, uid). With a query list of "
        "several languages, --t is English's t and every other language's t is the smallest whose tail share "
        "reaches English's (MetaCLIP 2). Writes "
        "OUT/selection/*.parquet (every row: status selected|dropped, reason not_in_pool|no_query_match|"
        "not_selected; with --online: eligible|dropped, every matched pool pair eligible with its keep_prob), "
        "OUT/urls/*.parquet (selected rows: uid, url, caption; a URL list for `wit download`), "
        "OUT/entry_counts.parquet, OUT/datacard.json and PNG plots.",
    )
    add_arguments(bal, BalanceConfig)
    bal.set_defaults(run=_curate_balance)


def _queries_build(args) -> int:
    from wit.filters.queries import QueryBuildConfig, build

    build(from_args(QueryBuildConfig, args))
    return 0


def _curate_match(args) -> int:
    from wit.shards.tables import parquet_inputs
    from wit.filters.match import MatchConfig, run

    run(from_args(MatchConfig, args, inputs=tuple(parquet_inputs(args.inputs))))
    return 0


def _curate_balance(args) -> int:
    from wit.filters.balance import BalanceConfig, run
    from wit.shards.tables import parquet_inputs

    run(from_args(BalanceConfig, args, matches=tuple(parquet_inputs(args.matches))))
    return 0
