"""Floor 1: atomic writes, table and token-shard formats, sidecars. No torch here."""
