"""Training: one fine-tuning loop with pluggable objectives; resumable sweeps from YAML configs."""
