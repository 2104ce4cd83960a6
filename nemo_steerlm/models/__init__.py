"""models layer of nemo-steerlm."""
