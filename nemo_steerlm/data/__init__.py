"""data layer of nemo-steerlm."""
