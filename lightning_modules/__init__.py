"""LightningModules, one per method, and the registry the train/evaluate stages look methods up in.

A new method joins by adding one entry to ``METHODS``; its instances have ``data_keys`` (arrays
the DataModule loads) and ``resolved_config()``. The evaluators that are trained on the training
split (SyncNet expert, emotion classifier) are trained through the same registry.
"""

from lightning_modules.cvae import CVAEModule
from lightning_modules.eapc import EAPCModule
from lightning_modules.emotion_classifier import EmotionClassifierModule
from lightning_modules.syncnet import SyncNetModule

METHODS: dict[str, type] = {
    "eapc": EAPCModule,
    "cvae": CVAEModule,  # emotion-controllable conditional VAE generator (paper 000)
    "emotion_classifier": EmotionClassifierModule,  # the EmoAcc evaluator (paper 000 §2.1)
    "syncnet": SyncNetModule,  # the expert lip-sync evaluator / loss (Wav2Lip-style, paper 000 eq. 4-5)
}
