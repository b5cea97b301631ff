"""How steering reaches a forward pass: ``combine`` compiles a row's steerings into per-layer
tensors, ``hooks`` adds them inside the decoder layers at each row's own positions, and
``interventions`` holds the operators (add, ablate, norm-preserving)."""
