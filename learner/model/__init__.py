"""What a model is: the taxonomy (attribute groups and their values), backbones, the multi-attribute classifier,
the optional object detector, and the bundle file that carries them with their manifest.

Must not: decode images, train, read a database or know about the registry.
"""
