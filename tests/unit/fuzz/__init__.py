"""Bad input, generated: every kind gets a clear, typed error and leaves nothing half-written."""
