"""virtkit guest agent: runs inside the guest; depends on nothing of virt/ (cryptography only)."""

__version__ = "0.1.0"
