"""Training data (phantoms, SynthRAD layout), training runs and evaluation."""
