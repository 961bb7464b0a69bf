"""pytest plugin entry point of the conformance suite (inert unless --virtkit-config is given)."""
