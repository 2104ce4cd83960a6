"""megatron layer of nemo-steerlm."""
