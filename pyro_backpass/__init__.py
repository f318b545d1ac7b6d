"""pyro-backpass: a backward pass through a CNN using a generative model of its activations.

Wang, Chen, Liu, George, Phoenix, *A backward pass through a CNN using a generative model of its
activations*. The library holds the distributions, top-down layers, hierarchy, handlers, inference
and learning; Pyro model programs live in ``models/`` and guides in ``guides/`` of the repository.
"""

__version__ = "0.1.0"
