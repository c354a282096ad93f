"""The folders under a pipeline's output root, named once: `wit pipeline` writes each stage's output there
(wit/stages.py) and `wit audit`, `wit revoke` and the ledger read them (each part optional except raw/):

  raw/                  crawl shards and manifests (wit download)
  verdicts/<stage>/     filter verdicts, one folder per stage (uid, keep, reason)
  queries.parquet       the query list (wit queries build)
  matches/              the captions' matched query ids (wit curate match)
  balance/              the balance: selection/ (uid, status, reason, matched), urls/, datacard.json
  corpus/               training shards, their corpus manifests and index.json (wit shards write)
  embeddings/           `wit embed`'s output, for the audit's CLIP-score section
  audit/                the report (wit audit)
  train/                the training run (logs, config); train/checkpoints/ its checkpoints
  _wit/pipeline/        the pipeline's stage records
"""
from __future__ import annotations

from dataclasses import dataclass

from wit.shards.storage import join


@dataclass(frozen=True)
class Layout:
    root: str

    @property
    def raw(self) -> str:
        return join(self.root, "raw")

    @property
    def all_verdicts(self) -> str:
        """The folder holding one verdict folder per filter stage."""
        return join(self.root, "verdicts")

    def verdicts(self, stage: str) -> str:
        return join(self.all_verdicts, stage)

    @property
    def images_summary(self) -> str:
        """The image stage's summary (it records the evaluation sets it hashed)."""
        return join(self.verdicts("images"), "_wit", "images_summary.json")

    @property
    def queries(self) -> str:
        return join(self.root, "queries.parquet")

    @property
    def matches(self) -> str:
        return join(self.root, "matches")

    @property
    def balance(self) -> str:
        return join(self.root, "balance")

    @property
    def selection(self) -> str:
        return join(self.balance, "selection")

    @property
    def datacard(self) -> str:
        return join(self.balance, "datacard.json")

    @property
    def corpus(self) -> str:
        return join(self.root, "corpus")

    @property
    def embeddings(self) -> str:
        return join(self.root, "embeddings")

    @property
    def audit(self) -> str:
        return join(self.root, "audit")

    @property
    def train(self) -> str:
        return join(self.root, "train")

    @property
    def checkpoints(self) -> str:
        return join(self.train, "checkpoints")

    @property
    def zeroshot(self) -> str:
        return join(self.root, "zeroshot.json")

    @property
    def records(self) -> str:
        return join(self.root, "_wit", "pipeline")
