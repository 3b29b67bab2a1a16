"""The diffusion model: network blocks, noise schedule, sampler, checkpoints, translator.

The only package that imports torch; everything outside talks to it through
:class:`ct2mri_node.model.translator.Translator` and numpy arrays.
"""
