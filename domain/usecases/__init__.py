"""The use cases: one module, one callable class each."""
