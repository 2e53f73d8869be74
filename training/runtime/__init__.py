"""What both engines (pre-training and fine-tuning) share to run: device and DDP placement,
thread policy, checkpoints, the run log, phase timers and the timm export."""
