"""A driver lists, counts and acts on only the instances it manages.

The observer makes an instance on the engine the way someone else would (a libvirt domain
through its own connection, a container through its own docker client, another host's
record for the fake), and the suite checks that the driver never lists it, never counts it
in get_available_resource, never finds it and never removes it. A driver without an observer
that can make one has these operations reported as "not observed".
"""

from __future__ import annotations

import contextlib

import pytest

from virt.errors import InstanceNotFound, VirtError
from virt.model import PowerState

ops = pytest.mark.virtkit_operations


@ops("list_instances", "list_instance_uuids", "instance_exists", "get_info", "destroy",
     "get_available_resource")
def test_an_instance_made_by_someone_else_is_not_the_drivers(driver, shared_instance, effects):
    before = driver.get_available_resource()
    with contextlib.ExitStack() as stack:
        foreign = effects.see("an instance of someone else's on the engine",
                              lambda o: stack.enter_context(o.foreign_instance()))
        if foreign is None:
            return  # noted as not observed: nothing to hold the driver to
        effects.expect("the observer made an instance of someone else's",
                       lambda o: o.power_state(foreign) is PowerState.RUNNING)

        assert foreign.uuid not in driver.list_instance_uuids(), "someone else's is listed"
        assert foreign.name not in driver.list_instances(), "someone else's is listed by name"
        assert shared_instance.uuid in driver.list_instance_uuids()
        assert driver.instance_exists(instance=foreign) is False
        with pytest.raises(InstanceNotFound):
            driver.get_info(instance=foreign)

        with_foreign = driver.get_available_resource()
        # Not counted as an instance of the driver's: the use does not grow by its size.
        assert with_foreign.vcpus_used < before.vcpus_used + foreign.flavor.vcpus, (
            f"vcpus_used {before.vcpus_used} -> {with_foreign.vcpus_used}: someone else's "
            f"{foreign.flavor.vcpus} vCPUs are counted")
        assert with_foreign.memory_mb_used < before.memory_mb_used + foreign.flavor.memory_mb, (
            f"memory_mb_used {before.memory_mb_used} -> {with_foreign.memory_mb_used}: "
            f"someone else's {foreign.flavor.memory_mb} MB are counted")

        with contextlib.suppress(VirtError):  # refused, or a no-op: either leaves it be
            driver.destroy(instance=foreign)
        effects.expect("destroy of someone else's instance leaves it on the engine, running",
                       lambda o: o.exists(foreign)
                       and o.power_state(foreign) is PowerState.RUNNING)
