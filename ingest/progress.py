"""A progress bar over pairs, fed by the stats files that finished shards publish (works for any distributor);
plain periodic lines instead of a bar when stderr is not a terminal (wit.shards.progress). Its figures: ok and
failed rows, rows/s of this run, and on a resume the shards an earlier run finished (their rows start the bar)."""
from __future__ import annotations

import threading
import time

from wit.shards.progress import bar
from wit.shards.storage import join, read_json
from wit.ingest.output import crawl_shard_names, own_shards, read_record


class ShardProgress:
    def __init__(self, out: str, total_rows: int, enabled: bool = True, every: float = 1.0):
        self.out, self.every = out, every
        self.shards = own_shards(read_record(out))
        self.seen = set(crawl_shard_names(out, self.shards))
        self.ok = self.failed = 0
        before = sum(self._count(name) for name in self.seen)
        self.earlier = f"{len(self.seen):,} shards" if self.seen else None
        self.bar = bar(total=total_rows, initial=before, unit="pair", desc="download", disable=not enabled)
        self.started, self.rows = time.monotonic(), 0
        self._show()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _count(self, name: str) -> int:
        """Add a finished shard's ok and failed rows; its rows."""
        try:
            wit = read_json(join(self.out, f"{name}_stats.json"))["wit"]
        except Exception:
            return 0
        self.ok += wit["samples"]
        self.failed += wit["rows"] - wit["samples"]
        return wit["rows"]

    def _show(self) -> None:
        elapsed = time.monotonic() - self.started
        figures = {"ok": self.ok, "failed": self.failed, "rows/s": f"{self.rows / elapsed:.1f}" if elapsed else "-"}
        if self.earlier:
            figures["done before"] = self.earlier
        self.bar.set_postfix(figures, refresh=False)

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self._refresh()

    def _refresh(self) -> None:
        for name in sorted(set(crawl_shard_names(self.out, self.shards)) - self.seen, key=int):
            self.seen.add(name)
            rows = self._count(name)
            self.rows += rows
            self._show()
            self.bar.update(rows)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._refresh()
        self.bar.close()
