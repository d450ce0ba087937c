"""Models and training: the backbone registry, Keras models, devices and the two-phase recipe."""
