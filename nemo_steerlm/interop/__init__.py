"""interop layer of nemo-steerlm."""
