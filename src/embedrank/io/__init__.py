"""Object storage and files: filesystems for URIs, input shards, Parquet files. Never imports torch or Ray."""
