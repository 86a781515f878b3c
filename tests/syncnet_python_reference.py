"""NumPy transcriptions of joonson/syncnet_python ``SyncNetInstance.py`` (the LSE-D / LSE-C
reference the tests compare ``eval_metrics.sync`` with)."""

import numpy as np


def calc_pdist(feat1, feat2, vshift):
    """NumPy transcription of joonson/syncnet_python ``SyncNetInstance.calc_pdist``: audio features
    zero-padded by ``vshift``, ``torch.nn.functional.pairwise_distance`` (eps 1e-6 added to the
    difference) between each visual feature and the 2 vshift + 1 audio features around it."""
    win_size = vshift * 2 + 1
    feat2p = np.pad(feat2, ((vshift, vshift), (0, 0)))
    dists = []
    for i in range(len(feat1)):
        diff = np.repeat(feat1[[i], :], win_size, axis=0) - feat2p[i:i + win_size, :] + 1e-6
        dists.append(np.sqrt((diff ** 2).sum(axis=1)))
    return dists


def syncnet_python_evaluate(im_feat, cc_feat, vshift=15):
    """The statistics ``SyncNetInstance.evaluate`` prints: (AV offset, Min dist, Confidence)."""
    dists = calc_pdist(im_feat, cc_feat, vshift)
    mdist = np.mean(np.stack(dists, 1), 1)
    minidx = int(np.argmin(mdist))
    minval = mdist[minidx]
    return vshift - minidx, minval, np.median(mdist) - minval, mdist
