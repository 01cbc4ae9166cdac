"""Route policy, outlier detection, transports and the RouterService (seed 001 §5–§14)."""
