"""Policy optimisation: one rollout engine and one trainer loop for PPO and the critic-free
algorithms, and DPO offline.

- `core`: PPO's pure functions (GAE, whitening, the clipped losses, KL estimators, Lagrange multiplier).
- `estimators`: GRPO's, Dr. GRPO's, RLOO's and REINFORCE++'s advantages, loss aggregations, k3 as a loss.
- `rollout`: sample, score, reference (and critic) passes, advantages.
- `trainer`: the loop: rollout, update, monitors, in-loop evaluation, checkpoints.
- `models`, `checkpoint`, `in_loop_eval`: the policy (and critic), resumable state, win rate against the start.
- `dpo`: Direct Preference Optimisation with TRL's DPOTrainer.
"""
