"""A progress bar over pairs, fed by the stats files that finished shards publish (works for any distributor);
plain periodic lines instead of a bar when stderr is not a terminal (wit.shards.progress)."""
from __future__ import annotations

import threading

from wit.shards.progress import bar
from wit.shards.storage import join, read_json
from wit.ingest.output import crawl_shard_names, own_shards, read_record


class ShardProgress:
    def __init__(self, out: str, total_rows: int, enabled: bool = True, every: float = 1.0):
        self.out, self.every = out, every
        self.shards = own_shards(read_record(out))
        self.seen = set(crawl_shard_names(out, self.shards))
        self.bar = bar(total=total_rows, unit="pair", desc="download", disable=not enabled)
        self.ok = self.failed = 0
        for name in self.seen:
            self._add(name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _add(self, name: str) -> None:
        try:
            wit = read_json(join(self.out, f"{name}_stats.json"))["wit"]
        except Exception:
            return
        self.ok += wit["samples"]
        self.failed += wit["rows"] - wit["samples"]
        self.bar.update(wit["rows"])
        self.bar.set_postfix(ok=self.ok, failed=self.failed, refresh=False)

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self._refresh()

    def _refresh(self) -> None:
        for name in sorted(set(crawl_shard_names(self.out, self.shards)) - self.seen, key=int):
            self.seen.add(name)
            self._add(name)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._refresh()
        self.bar.close()
