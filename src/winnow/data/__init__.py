"""Floor 2: ingest, tokenizers, tokenization into shards, subsets, evaluation task data."""
