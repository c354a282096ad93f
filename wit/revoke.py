"""`wit revoke ROOT`: take samples back everywhere, and say which checkpoints trained on them.

A request (URLs, domains, uids, images) goes into ROOT's append-only ledger (shards/revocations.py), then the ledger
is applied to the corpus under ROOT (shards/revoke.py: only the shards that hold a revoked sample are rewritten);
crawls, selections and reshards under ROOT read the ledger from then on. `--report` changes nothing: per training
run and checkpoint, how many revoked samples its lineage read (shards/lineage.py).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from wit.shards import fasttar, lineage, revocations
from wit.shards.layout import Layout
from wit.shards.lock import output_lock
from wit.shards.options import opt
from wit.shards.phash import phash_bytes
from wit.shards.revoke import apply, corpus_of, phashes_of
from wit.shards.runner import EngineOptions
from wit.shards.sql import SQLOptions, default_temp_dir
from wit.shards.storage import WitError, absolute, exists, fs_and_path, remove_scratch


@dataclass(frozen=True, kw_only=True)
class RevokeConfig(EngineOptions, SQLOptions):
    root: str = opt(help="the folder the revocation applies to (it and every folder under it): a pipeline's out, a "
                         "crawl's --out or a corpus (wit shards write --out); the ledger is ROOT/_wit/revocations/",
                    positional=True)
    urls: str | None = opt(None, "text file, one URL per line: pairs with that URL (as listed)", metavar="FILE")
    domains: str | None = opt(None, "text file, one host per line: URLs on that host; `*.example.com` also takes "
                                    "its subdomains", metavar="FILE")
    uids: str | None = opt(None, "text file, one uid per line", metavar="FILE")
    images: str | None = opt(None, "an image file or a folder of images: samples with the same bytes (sha256 of the "
                                   "downloaded image), and with --near, a pHash within D bits", metavar="PATH")
    near: int | None = opt(None, "with --images: also match pHashes within D bits (a re-encoded or resized copy; "
                                 "`wit dedup` finds near copies at 2)", metavar="D", minimum=0)
    reason: str = opt("", "why (kept in the ledger with the date; who asked is not recorded)")
    corpus: str | None = opt(None, "the corpus to apply the ledger to (default: ROOT or ROOT/corpus, whichever holds "
                                   "index.json)")
    phashes: str | None = opt(None, "image verdicts of the corpus's crawl (`wit filter images --out`), which hold its "
                                    "samples' pHashes, for --near requests (default: ROOT/verdicts/images)")
    report: bool = opt(False, "change nothing: per training run and checkpoint, how many revoked samples it read")
    runs: tuple[str, ...] = opt((), "checkpoint folders of training runs, for --report (default: "
                                    "ROOT/train/checkpoints)", metavar="DIR")


def revoke(cfg: RevokeConfig) -> dict:
    """Append the request (if any), then apply the ledger to the corpus under ROOT."""
    root = absolute(cfg.root)
    rows = request_rows(cfg)
    request = revocations.request_table(rows, cfg.reason) if rows else None
    corpus = corpus_of(root, absolute(cfg.corpus) if cfg.corpus else None)
    with output_lock(root, "wit revoke"):
        summary: dict = {"root": root, "ledger": revocations.ledger_of(root)}
        if request is not None:
            path, added = revocations.append_request(root, request)
            summary.update(request=path, added=added, keys=len(rows))
        if corpus is None:
            summary["corpus"] = None
            return summary
        phashes = phashes_of(root, absolute(cfg.phashes) if cfg.phashes else None)
        with cfg.connect(output=corpus) as con:
            summary.update(apply(root, corpus, con, phashes=phashes, engine=cfg.engine, workers=cfg.workers,
                                 ray_address=cfg.ray_address))
        if cfg.temp_dir is None:
            remove_scratch(default_temp_dir(corpus))  # DuckDB's spill folder under the corpus's _wit/
    return summary


def report(cfg: RevokeConfig) -> list[dict]:
    root = absolute(cfg.root)
    runs = [absolute(r) for r in cfg.runs] or [r for r in [Layout(root).checkpoints] if exists(r)]
    if not runs:
        raise WitError(f"{root}: no training runs to report on (ROOT/train/checkpoints); name them with --runs")
    return lineage.report(revocations.load(root).removed, runs)


# ---------------------------------------------------------------------------------------------- request files
def request_rows(cfg: RevokeConfig) -> list[dict]:
    """The keys the flags name, as ledger rows ({kind, value[, phash, near]}); a bad line is a one-line error."""
    rows = [{"kind": "url", "value": u} for u in _lines(cfg.urls, _url)] if cfg.urls else []
    if cfg.domains:
        rows += [{"kind": "subdomains" if d.startswith("*.") else "domain", "value": d.removeprefix("*.")}
                 for d in _lines(cfg.domains, _domain)]
    if cfg.uids:
        rows += [{"kind": "uid", "value": u} for u in _lines(cfg.uids, _uid)]
    if cfg.images:
        rows += image_rows(cfg.images, cfg.near)
    elif cfg.near is not None:
        raise WitError("--near D matches request images by pHash: give them with --images")
    return rows


def _lines(url: str, check) -> list[str]:
    fs, path = fs_and_path(absolute(url))
    try:
        with fs.open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise WitError(f"{url}: no such file") from None
    except UnicodeDecodeError:
        raise WitError(f"{url}: not UTF-8 text") from None
    values = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            problem = check(line)
            if problem:
                raise WitError(f"{url}: line {n}: {line[:80]!r} {problem}")
            values.append(line.lower().rstrip(".") if check is _domain else line)
    if not values:
        raise WitError(f"{url}: holds no entries (one per line; # starts a comment)")
    return values


def _url(line: str) -> str | None:
    return None if "://" in line and " " not in line else "is not a URL"


def _domain(line: str) -> str | None:
    host = line.removeprefix("*.")
    if not host or any(c in host for c in "/:@ \t*") or host.startswith("."):
        return "is not a host name (example.com, or *.example.com for it and its subdomains)"
    return None


def _uid(line: str) -> str | None:
    return None if len(line) == 32 and all(c in "0123456789abcdef" for c in line) else "is not a uid (32 hex digits)"


def image_rows(where: str, near: int | None) -> list[dict]:
    """sha256 (and with `near`, pHash) rows for an image file or every image in a folder."""
    fs, path = fs_and_path(absolute(where))
    if not fs.exists(path):
        raise WitError(f"{where}: no such file or folder")
    files = sorted(p for p in fs.find(path) if fasttar.is_image_file(p)) if fs.isdir(path) else [path]
    if not files or not fasttar.is_image_file(files[0]):
        raise WitError(f"{where}: {'holds' if fs.isdir(path) else 'is'} no image ({', '.join(fasttar.IMAGE_EXTS)})")
    rows = []
    for file in files:
        with fs.open(file, "rb") as f:
            data = f.read()
        name = file.rsplit("/", 1)[-1]
        rows.append({"kind": "sha256", "value": hashlib.sha256(data).hexdigest()})
        if near is not None:
            try:
                rows.append({"kind": "phash", "value": name, "phash": phash_bytes(data), "near": near})
            except Exception as err:  # noqa: BLE001 - PIL raises many kinds for bytes that are no image
                raise WitError(f"{file}: not an image PIL can read ({type(err).__name__})") from None
    return rows


# ---------------------------------------------------------------------------------------------- the command
def run(cfg: RevokeConfig) -> dict | list[dict]:
    """`wit revoke` (wit/commands.py declares it): the request applied, or with --report the checkpoints' rows."""
    if not cfg.report:
        return revoke(cfg)
    if cfg.urls or cfg.domains or cfg.uids or cfg.images:
        raise WitError("--report changes nothing; make the request first, then ask for the report")
    return report(cfg)


def show(result: dict | list[dict]) -> int:
    """The report as lines, a revocation's summary as JSON."""
    if isinstance(result, list):
        for line in lineage.show(result):
            print(line)
    else:
        print(json.dumps(result, indent=2))
    return 0
