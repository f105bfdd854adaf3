"""Floor 3: the trainer, its schedules and its batches."""
