"""Pre-training (method §7): a session (network, teacher, objective, optimizer, schedules, data),
its evaluations, and the one training loop that runs a trial."""
