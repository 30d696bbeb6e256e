"""QuantEnv, a gymnasium environment over a bitsearch Problem."""
