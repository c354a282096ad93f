"""The user's door: the `wit` command. Nothing below (shards/, ingest/, filters/, trainer/) imports it."""
