"""evaluation layer of nemo-steerlm."""
