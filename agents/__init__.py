"""Deep-RL searchers: hierarchical AutoQ-style and flat HAQ-style agents (stable-baselines3)."""
