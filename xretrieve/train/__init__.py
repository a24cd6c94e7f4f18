"""Training and evaluation: the demo world, CLIP and audio-tower training, CLAP fitting, R@K.

Nothing in the package imports `xretrieve.train`; a search never loads it.
"""
