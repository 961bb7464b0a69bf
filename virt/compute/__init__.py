"""The compute service: the configured driver plus the state store.

- `service`: `ComputeService`, the operations the CLI and embedders call.
- `records`: the record keeping around each driver call (task state, outcome, fault, events).
"""

from virt.compute.service import ComputeService

__all__ = ["ComputeService"]
