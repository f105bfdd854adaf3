"""Floor 2: LM construction from config or a local folder; checkpoints with name-keyed optimizer state."""
