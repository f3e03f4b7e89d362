"""Float passes: the inference simplifications every build gets before quantization or scheduling."""

from __future__ import annotations


def float_passes():
    """Batch norms folded into the convolutions before them, constants folded, clips made Relax
    ops again, divisions by constants made multiplications, aliases removed."""
    import tvm
    from tvm import relax

    from .canonicalize_clip import canonicalize_clip
    from .channel_prelu import channel_prelu
    from .fold_constants import FoldConstantsWithNumpy, FoldRemainingConstants
    from .reciprocal import reciprocal_divisions

    return [relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(),
            FoldConstantsWithNumpy, FoldRemainingConstants, relax.transform.CanonicalizeBindings(),
            tvm.transform.module_pass(lambda mod, _ctx: canonicalize_clip(mod), opt_level=0, name="CanonicalizeClip"),
            tvm.transform.module_pass(lambda mod, _ctx: channel_prelu(mod), opt_level=0, name="ChannelPReLU"),
            tvm.transform.module_pass(lambda mod, _ctx: reciprocal_divisions(mod), opt_level=0, name="ReciprocalDivisions"),
            relax.transform.DeadCodeElimination()]
