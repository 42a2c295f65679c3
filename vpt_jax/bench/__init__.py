"""Speed measurements (benchmark.py) and the PyTorch reference model they compare against
(torch_reference.py). Not needed for training; torch and timm are the `reference` extra."""
