"""The shared engine: training loop, evaluation, checkpoints, schedules."""
