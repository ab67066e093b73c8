"""Session fixtures that build small real shard sets with `shards build` (owned by the shards area)."""
