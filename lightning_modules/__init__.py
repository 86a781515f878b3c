"""LightningModules, one per method, and the registry the train/evaluate stages look methods up in.

A new method joins by adding one entry to ``METHODS``; its class defines ``data_keys`` (arrays
the DataModule loads) and ``resolved_config()``.
"""

from lightning_modules.eapc import EAPCModule

METHODS: dict[str, type] = {
    "eapc": EAPCModule,
}
