"""Policy optimisation: one rollout engine and one training loop for the online algorithms (PPO,
PPO-Lagrangian, GRPO, RLOO, REINFORCE++; GSPO's object is written and awaits its schema line), and
DPO offline.

- `algorithms`: one object per online algorithm: its advantages, its loss, what it needs and logs.
- `core`: PPO's pure functions (GAE, whitening, the clipped surrogate, the value loss, KL estimators,
  the Lagrange multiplier); `estimators`: the critic-free advantages, loss aggregations, k3 as a loss.
- `rollout`: sample -> score -> KL -> advantages; `update`: epochs of the loss over minibatches.
- `trainer`: the loop: rollout, update, controllers, monitors, in-loop evaluation, checkpoints.
- `engine`: processes and sharding (DDP, ZeRO, FSDP2), offloading, saving the policy.
- `models`, `checkpoint`, `in_loop_eval`, `monitors`: the policy (and critic), resumable state, win rate
  against the start, what ends a run early.
- `from_inputs`: the train_policy stage's work from its input paths; `dpo`: DPO with TRL's DPOTrainer.
"""
