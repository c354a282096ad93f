"""A generated pipeline folder (crawl manifests and tars, image verdicts, match files) with every curation problem
in it, the global steps run over it (text filter, dedup, balance, audit), and their outputs reduced to hashes.

The expectation `tests/golden/curate.json` was written by the code before the global steps were rewritten out of
core (commit 196000a), and again when keep_prob and lang_prob became the same bits on every CPU (2026-12-07: the
same verdicts, selected rows and URL lists; only those floats' last bits moved) and when the English filter began
to check langid's verdict against the words (106 English word-salad captions langid gave to other languages now
stay; every foreign caption is still dropped), and when dedup's summary stopped counting earlier stages' drops as
its own (its files unchanged); `tests/test_curate_golden.py`
checks that today's code gives the same rows. Regenerate it only when an output is meant to change:
`python -m tests.curate_pool --write`.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wit.shards import fasttar
from wit.shards.schema import MANIFEST, MATCHES, OK, row_uids

GOLDEN = Path(__file__).resolve().parent / "golden" / "curate.json"
ENTRIES = 300
WORDS = ("a dog cat man woman child red blue green small big old young runs sits jumps on the in with at near "
         "beach park street field water snow grass tree house car bike ball sunset morning night city river").split()
FOREIGN = ["Ein Hund läuft mit einem Ball über die grüne Wiese", "Un chien court dans le parc avec une balle rouge",
           "Un perro corre por la playa con su dueño", "Zwei Kinder spielen im Schnee vor dem Haus"]
JUNK = ["", "   ", "IMG_1234.JPG", "DSC01234", "image", "Untitled", "https://example.com/x.jpg", "abc", "x" * 1200]


def _caption(rng) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(4, 12))))


def _jpeg(rgb: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 16), rgb).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def make_pool(root: Path, shards: int = 4, rows: int = 1500, seed: int = 0, tars: bool = True) -> None:
    """raw/ (manifests, tars, stats), verdicts/images/ and matches/, all named like the crawl's shards."""
    rng = np.random.default_rng(seed)
    pairs: list[tuple[str, str]] = []
    for i in range(shards * rows):
        r = rng.random()
        if pairs and r < 0.04:  # the same pair again, maybe in another shard
            pairs.append(pairs[int(rng.integers(len(pairs)))])
            continue
        url = f"http://h{int(rng.integers(40))}.example.com/img/{i}.jpg"
        if pairs and r < 0.08:  # the same URL, spelled differently or with another caption
            prev = pairs[int(rng.integers(len(pairs)))][0]
            url = rng.choice([prev, prev.replace("http://", "HTTP://") + "#top", prev.replace(".com/", ".com:80/")])
        c = rng.random()
        caption = str(rng.choice(JUNK)) if c < 0.08 else str(rng.choice(FOREIGN)) if c < 0.11 else _caption(rng)
        pairs.append((url, caption))
    uids = row_uids(pairs)
    raw, images, matches = root / "raw", root / "verdicts" / "images", root / "matches"
    for d in (raw, images, matches):
        d.mkdir(parents=True, exist_ok=True)
    hashes = [int(rng.integers(-2**63, 2**63 - 1)) for _ in uids]
    meta = {"wit.queries": str(root / "queries.parquet"), "wit.queries.version": "v-golden",
            "wit.queries.entries": str(ENTRIES)}
    zipf = 1.0 / np.arange(1, ENTRIES + 1) ** 1.1
    zipf /= zipf.sum()
    for s in range(shards):
        name = f"{s:05d}"
        lo = s * rows
        man, ver, mat, tar = [], [], [], []
        for j in range(rows):
            i = lo + j
            (url, caption), uid = pairs[i], uids[i]
            ok = rng.random() < 0.8
            key = f"{name}{j:04d}"
            ow, oh = int(rng.integers(80, 1200)), int(rng.integers(80, 1200))
            man.append(dict(uid=uid, url=url, caption=caption, status=OK if ok else "failed",
                            reason=None if ok else str(rng.choice(["http_404", "timeout", "decode_error"])),
                            shard=name, key=key if ok else None, width=256 if ok else None, height=256 if ok else None,
                            original_width=ow if ok else None, original_height=oh if ok else None,
                            sha256=f"{i:064x}" if ok else None, source_file="lists/l.csv", source_row=i))
            if ok:
                tar.append((key, {"jpg": _jpeg((i * 37 % 256, i * 91 % 256, i * 53 % 256)), "txt": caption.encode()}))
            h, reason = hashes[i], None
            if ok:
                c = rng.random()
                if c < 0.06 and i > 0:
                    h = hashes[int(rng.integers(i))]  # an exact copy of an earlier image
                elif c < 0.09 and i > 0:
                    h = hashes[int(rng.integers(i))] ^ (1 << int(rng.integers(63))) ^ (1 << int(rng.integers(63)))
                hashes[i] = h
                reason = ("too_small" if min(ow, oh) < 200 else "eval_leak:test.tar/%05d.jpg" % int(rng.integers(50))
                          if c > 0.97 else None)
            else:
                reason = "not_ok_in_ingest"
            ver.append(dict(uid=uid, keep=reason is None, reason=reason, dup_of=None, key=key if ok else None,
                            sha256=f"{i:064x}" if ok else None, phash=h if ok else None,
                            short_side=min(ow, oh) if ok else None, aspect=max(ow, oh) / min(ow, oh) if ok else None,
                            detail=None))
            n = int(rng.poisson(2.0))
            mat.append(dict(uid=uid, matched=sorted({int(x) for x in rng.choice(ENTRIES, size=n, p=zipf)}), url=url,
                            caption=caption, status=OK if ok else "failed"))
        pq.write_table(pa.Table.from_pylist(man, schema=MANIFEST), raw / f"{name}.parquet")
        if tars:
            (raw / f"{name}.tar").write_bytes(fasttar.write_samples(iter(tar)))
        (raw / f"{name}_stats.json").write_text(json.dumps({"wit": {"verified": True, "rows": rows,
                                                                     "samples": len(tar)}}))
        pq.write_table(pa.Table.from_pylist(ver, schema=_image_schema()), images / f"{name}.parquet")
        schema = MATCHES.append(pa.field("url", pa.string())).append(pa.field("caption", pa.string()))
        schema = schema.append(pa.field("status", pa.string())).with_metadata(meta)
        pq.write_table(pa.Table.from_pylist(mat, schema=schema), matches / f"{name}.parquet")


def _image_schema() -> pa.Schema:
    from wit.filters.images import IMAGE_VERDICT

    return IMAGE_VERDICT


def write_corpus(root: Path) -> None:
    """A corpus manifest of the rows that survived every stage (what `wit shards write` would list)."""
    def rows(folder: Path) -> list[dict]:
        return [r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]

    raw = rows(root / "raw")
    keep = {}
    for stage in ("text", "dedup"):
        for r in rows(root / "verdicts" / stage):
            keep[r["uid"]] = keep.get(r["uid"], True) and r["keep"]
    sel = {r["uid"]: r for r in rows(root / "balance" / "selection") if r["status"] == "selected"}
    rows = [dict(uid=r["uid"], url=r["url"], caption=r["caption"], original_width=r["original_width"],
                 original_height=r["original_height"], matched=sel[r["uid"]]["matched"])
            for r in raw if r["status"] == OK and keep.get(r["uid"]) and r["uid"] in sel]
    corpus = root / "corpus"
    corpus.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
        ("uid", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("original_width", pa.int32()),
        ("original_height", pa.int32()), ("matched", pa.list_(pa.int32()))])), corpus / "00000.parquet")
    (corpus / "index.json").write_text(json.dumps({"total": len(rows), "shards": {"00000": len(rows)}}))


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def folder_rows(folder: Path) -> dict[str, str]:
    """sha256 of every parquet file's rows (values in order; not the bytes, which depend on the writer)."""
    return {p.name: digest(pq.read_table(p).to_pylist()) for p in sorted(folder.glob("*.parquet"))}


def run_pipeline(root: Path, **sql) -> dict:
    """Text filter, dedup after it, balance after both, audit without and with a corpus; their outputs reduced.

    `sql` (memory_limit, temp_dir) goes to every step that takes it."""
    from wit.filters.balance import BalanceConfig, run as balance
    from wit.filters.dedup import DedupConfig, dedup
    from wit.filters.text import TextConfig, run_text
    from wit.shards.audit import AuditConfig, audit

    def opts(cls):
        names = {f for f in getattr(cls, "__dataclass_fields__", {})}
        return {k: v for k, v in sql.items() if k in names}

    v = root / "verdicts"
    out: dict = {}
    text = run_text(TextConfig(inputs=(str(root / "raw"),), out=str(v / "text"), workers=1, **opts(TextConfig)))
    out["text"] = {"summary": text, "files": folder_rows(v / "text")}
    stats = dedup(DedupConfig(images=str(v / "images"), out=str(v / "dedup"), near_k=2, after=(str(v / "text"),),
                              **opts(DedupConfig)))
    out["dedup"] = {"summary": {k: val for k, val in stats.items() if not k.endswith("_s")},
                    "files": folder_rows(v / "dedup")}
    matches = tuple(str(p) for p in sorted((root / "matches").glob("*.parquet")))
    card = balance(BalanceConfig(matches=matches, out=str(root / "balance"), t=40, seed=3, workers=1,
                                 verdicts=(str(v / "text"), str(v / "dedup")), **opts(BalanceConfig)))
    out["balance"] = {"card": {k: card[k] for k in ("pairs", "entries", "top_entries")},
                      "selection": folder_rows(root / "balance" / "selection"),
                      "urls": folder_rows(root / "balance" / "urls"),
                      "entry_counts": digest(pq.read_table(root / "balance" / "entry_counts.parquet").to_pylist())}
    for name in ("audit", "audit_corpus"):
        if name == "audit_corpus":
            write_corpus(root)
        audit(AuditConfig(root=str(root), out=str(root / name), **opts(AuditConfig)))
        report = json.loads((root / name / "report.json").read_text())
        out[name] = {k: val for k, val in report.items() if k not in ("root", "gallery")}
    return out


def main() -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN}")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wit-golden-"))
    try:
        make_pool(tmp)
        got = run_pipeline(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(got, indent=1, sort_keys=True, default=str) + "\n"
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    print(text[:3000])


if __name__ == "__main__":
    main()
