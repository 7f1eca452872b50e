"""PPO for RLHF: pure loss functions in `core`, the rollout-and-update loop in `trainer`."""
