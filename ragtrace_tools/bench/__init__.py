"""The benchmarks: `ragtrace bench` (stack.py, the running stack), `bench-device` (device.py), `bench-scale`
(scale.py, with scale_probe.py as its fresh search process) and `bench-onnx` (onnx_backends.py); measure.py is
what they share. Kept free of imports, so that scale_probe.py's process loads none of the others' (torch among
them)."""
