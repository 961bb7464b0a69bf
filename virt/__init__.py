"""virtkit: a compute hypervisor driver framework.

`import virt` is cheap: it imports no backend library and no driver.
"""

__version__ = "0.1.0"
