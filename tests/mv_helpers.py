"""Test helper shared by the MVModel tests."""


def adapter_features(model, rgb, ccm):
    """Feedback maps [N,3,H,W] each -> [rgb features, ccm features] through MVModel's two adapters,
    the way the runtime computes them once for both CFG halves."""
    return [encoder(maps) for encoder, maps in zip(model.cond_encoder, (rgb, ccm))]
