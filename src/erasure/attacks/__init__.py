"""Attacks on an erased concept (issue 20): what recovers it from the erased weights. So far: typed
variants of its name (typed.py); the attack stage, concept inversion, soft prompts and text-free
probes are to come."""
