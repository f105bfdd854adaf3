"""Floor 3: perplexity per domain and lm-eval with locally generated tasks."""
