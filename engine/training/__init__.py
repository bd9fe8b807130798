"""Training: stages (vae, understanding, generation, joint), the trainer loop, resumable state, distributed launch."""
