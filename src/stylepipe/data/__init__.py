"""Data ingestion: verified downloads, robust decoding, resizing into shards."""
