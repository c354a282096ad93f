"""Ingest: URL-caption lists -> normalised input -> img2dataset download -> verified shards + wit manifests."""
