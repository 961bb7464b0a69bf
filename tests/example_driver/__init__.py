"""An example compute driver, the worked example of docs/writing-a-driver.md.

One folder is one backend: `driver.py` (the ComputeDriver subclass), `connection.py` (the
client and error translation), `spec.py` (what the engine is asked to create), `states.py`
(engine states -> PowerState), `events.py` (engine changes -> lifecycle events), `images.py`
(root disks). `engine.py` is not part of the driver: it stands for the engine itself.
`conformance.conf.in` is its conformance config; tests/unit/test_example_driver.py runs the
suite against it.
"""
