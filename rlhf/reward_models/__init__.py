"""Reward models: what learns people's (or a judge's) preferences and scores responses by them.

- `train`: Bradley-Terry training on the comparisons (pairwise with TRL's RewardTrainer, or K-wise),
  a trained model taken as it is, and the held-out report.
- `kwise`: one ranking per batch element, its K responses scored once for all C(K,2) pairs.
- `ensemble`: N reward models scored by their mean, saved and loaded as one.
- `report`: calibration, accuracy by label source and margin, the score histograms.
- `cost`: Safe RLHF's cost model on the harmlessness flags.
"""
