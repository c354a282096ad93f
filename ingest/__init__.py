"""Ingest: URL-caption lists -> normalised input -> img2dataset download -> verified shards + wit manifests."""
import os

# albumentations (imported by img2dataset) asks PyPI for a newer version at import unless this is set; it must be
# set before any ingest module imports img2dataset, so it lives here.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
