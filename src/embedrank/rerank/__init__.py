"""The rerank job: candidate lists or flat pairs -> (query, document) pairs -> prompt tokens -> scores ->
per-query ranks, committed per input shard."""
