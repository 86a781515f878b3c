"""LightningModules, one per method, and the registry the train/evaluate stages look methods up in.

A new method joins by adding one entry to ``METHODS``; its instances have ``data_keys`` (arrays
the DataModule loads) and ``resolved_config()``. The networks trained on the training split are
trained through the same registry, twice each, as separate checkpoints from separate DVC stages
with different seeds: ``syncnet`` / ``emotion_classifier`` are what generators learn from (their
losses); ``syncnet_eval`` / ``emotion_classifier_eval`` only score (``evaluate_video`` refuses a
generator whose config names an evaluator checkpoint).
"""

from lightning_modules.autoencoder import AutoencoderModule
from lightning_modules.cvae import CVAEModule
from lightning_modules.eapc import EAPCModule
from lightning_modules.eapc_vid2vid import EAPCVid2VidModule
from lightning_modules.emotalker import EmoTalkerModule
from lightning_modules.emotion_classifier import EmotionClassifierModule
from lightning_modules.sinha import SinhaModule
from lightning_modules.syncnet import SyncNetModule
from lightning_modules.two_stage import TwoStageModule

METHODS: dict[str, type] = {
    "eapc": EAPCModule,
    "eapc_vid2vid": EAPCVid2VidModule,  # EAPC stage 2: few-shot vid2vid over stage 1's landmarks (paper 001 §3.5)
    "cvae": CVAEModule,  # emotion-controllable conditional VAE generator (paper 000)
    "sinha": SinhaModule,  # landmark GCN + flow-guided texture generator, one-shot (paper 002)
    "two_stage": TwoStageModule,  # StarGAN emotion editing, then Wav2Lip-style lip-sync (paper 003)
    "emotalker": EmoTalkerModule,  # latent diffusion, prompt emotion + intensity, identity-preserving DDIM (paper 004)
    "autoencoder": AutoencoderModule,  # emotalker's frozen f4 image autoencoder (paper 004 §2.1)
    "emotion_classifier": EmotionClassifierModule,  # emotion loss network of the generators (paper 000 §2.1)
    "syncnet": SyncNetModule,  # expert lip-sync loss network (Wav2Lip-style, paper 000 eq. 4-5)
    "emotion_classifier_eval": EmotionClassifierModule,  # the EmoAcc evaluator: same architecture, own seed
    "syncnet_eval": SyncNetModule,  # the lse_*_expert evaluator: same architecture, own seed
}
VIDEO_MODELS: dict[str, str] = {"eapc": "eapc_vid2vid"}
"""Methods whose video comes from another checkpoint: EAPC's stage 2 carries its stage 1, so
``generate --method eapc`` loads ``models/eapc_vid2vid/<dataset>``."""
LOSS_NETWORKS: dict[str, str] = {"syncnet": "syncnet_eval", "emotion_classifier": "emotion_classifier_eval"}
"""Loss network -> the evaluator that replaces it when scoring (never the same checkpoint)."""
