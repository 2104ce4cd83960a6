"""recipes layer of nemo-steerlm."""
