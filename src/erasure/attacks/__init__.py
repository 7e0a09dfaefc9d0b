"""Attacks on an erased concept (issue 20): what recovers it from the erased weights. So far: typed
variants of its name (typed.py) and learned token embeddings, concept inversion and soft prompts
(learned.py); the attack stage, its gates and the text-free probes are to come."""
