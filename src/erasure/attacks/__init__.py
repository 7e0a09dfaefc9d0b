"""Attacks on an erased concept (issue 20): what recovers it from the erased weights. So far: typed
variants of its name (typed.py), learned token embeddings, concept inversion and soft prompts
(learned.py), and diffusion completion, a probe that bypasses the text (completion.py); the attack
stage, its gates and the robust erasure option are to come."""
