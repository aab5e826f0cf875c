"""Object storage and files: listing and reading shards, writing Parquet, committing. Never imports torch."""
