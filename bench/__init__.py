"""techbench: measures what deep-learning efficiency techniques trade, on the hardware you have.

The harness core; it knows nothing about any technique. Importing it does not import torch.
"""

__version__ = "0.1.0"
