"""Small shared primitives with no project dependencies.

Every other package may import these; they import nothing from the project:

* :mod:`primitives.vocab`: the emotion / intensity vocabularies of every dataset, shard and model;
* :mod:`primitives.checksum`: sha256 checks of local weight files (nothing is downloaded);
* :mod:`primitives.geometry`: the Umeyama similarity fit and affine face-crop warps;
* :mod:`primitives.sync_windows`: the 5-frame / 16-mel-row windows of SyncNet (train and score).
"""
