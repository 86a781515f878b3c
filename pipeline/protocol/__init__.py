"""The video evaluation protocol's parts (``pipeline.evaluate_video`` is the DVC stage that runs them).

* :mod:`.one_video`: paper 004 §3.2's fine-tuning on one video of each test identity.
"""
