"""Runnable example providers for the PowerX mesh (`python -m examples.echo_provider`)."""
