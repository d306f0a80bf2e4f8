"""A synthetic world of coloured shapes moving on a plain background, its clip analyser, and
the script that trains the tiny CogVideoX models shipped in ``cogvideox_core/data/tiny_world``.

Not imported by the pack: ``world`` makes (caption, clip) pairs, ``analyse`` reads colour,
shape and motion back from a clip, ``train`` trains the VAE, the text-to-video and the Fun InP
transformers on it (``python -m benchmarks.tiny_world.train --help``).
"""
