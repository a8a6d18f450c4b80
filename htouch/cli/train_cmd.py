"""`htouch train`, `eval`, `rollout`, `experiment` and `pretrain`: policies that hear touch."""
