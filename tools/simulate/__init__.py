"""The step-time simulator (`python -m tools.simulate --help`)."""
