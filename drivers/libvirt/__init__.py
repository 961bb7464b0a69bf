"""The libvirt/KVM compute driver."""
