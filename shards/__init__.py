"""The ground floor: manifest schema, storage, tar shards, verification, runners.

`ingest/`, `filters/` and `trainer/` import from here and never from each other.
"""
