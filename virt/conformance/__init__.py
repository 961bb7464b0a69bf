"""The driver conformance suite, shipped as a pytest plugin."""
