"""Registers the built-in metrics and the shared networks they use (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_metrics(register):
    register("psnr", "facedefense_metrics.psnr:PSNR", summary="Peak signal-to-noise ratio against the reference (dB)", tags=("default",))
    register("ssim", "facedefense_metrics.ssim:SSIM", summary="Structural similarity against the reference (11x11 Gaussian, sigma 1.5)", tags=("default",))
    register("linf", "facedefense_metrics.linf:Linf", summary="Largest pixel difference from the reference, in gray levels (checks a budget)")
    register("ciede2000", "facedefense_metrics.ciede2000:CIEDE2000", summary="CIEDE2000 colour difference from the reference (sRGB -> CIELAB D65), mean over the pixels")
    register("l0", "facedefense_metrics.l0:L0", summary="Share of values (pixels x channels) changed from the reference by at least one gray level")
    register("fdfr", "facedefense_metrics.fdfr:FDFR", summary="Face detection failure rate (Anti-DreamBooth); face backend dlib, dlib_torch, mtcnn, retinaface or arcface", tags=("face",))
    register("ism", "facedefense_metrics.ism:ISM", summary="Identity score matching: cosine to the mean face embedding of the clean reference set", tags=("face",))
    register("fr", "facedefense_metrics.fr:FR", summary="FaceLock's identity similarity between each edit and its source photo", tags=("face",))
    register("ser_fiq", "facedefense_metrics.ser_fiq:SERFIQ", summary="SER-FIQ face quality: agreement of dropout-perturbed ArcFace embeddings (weights by path)", tags=("face",))
    register("brisque", "facedefense_metrics.brisque:BRISQUE", summary="BRISQUE no-reference quality (brisque package's SVM; lower is better)")
    register("lpips", "facedefense_metrics.lpips:LPIPS", summary="LPIPS perceptual distance (lpips package; backbone weights by path)", tags=("needs_model",))
    register("fid", "facedefense_metrics.fid:FID", summary="Frechet Inception distance between the image set and the reference set", tags=("needs_model",))
    register("clip_s", "facedefense_metrics.clip_s:CLIPScore", summary="FaceLock's directional CLIP-S: cosine of each edit's CLIP change from its source with the instruction (weights by path)", tags=("needs_model",))
    register("clip_t", "facedefense_metrics.clip_t:CLIPText", summary="CLIP-T: CLIP text-image similarity to the prompt (weights by path)", tags=("needs_model",))
    register("clip_iqa", "facedefense_metrics.clip_iqa:CLIPIQA", summary="CLIP-IQA zero-shot quality as pyiqa's clipiqa: RN50 at the image's size, five good/bad prompt pairs", tags=("needs_model",))
    register("liqe", "facedefense_metrics.liqe:LIQE", summary="LIQE quality 1-5 from CLIP vision-language correspondence (LIQE.pt by path)", tags=("needs_model",))
    register("clip_i", "facedefense_metrics.clip_i:CLIPImage", summary="CLIP image-image similarity to the paired reference (weights by path)", tags=("needs_model",))
    register("ims_clip", "facedefense_metrics.ims_clip:IMSCLIP", summary="DiffAdvPerturbationBench's IMS with CLIP: cosine of each image's CLIP embedding to the clean set's mean (weights by path)", tags=("needs_model",))


@facedefense.hookimpl
def register_models(register):
    register("dlib_torch", "facedefense_metrics.faces.dlib_torch:build", summary="dlib's 128-D face-recognition ResNet in torch (differentiable face chips)")
    register("lpips", "facedefense_metrics.lpips:build", summary="lpips.LPIPS with a torchvision backbone loaded from a file")
    register("inception_v3", "facedefense_metrics.fid:build", summary="Inception-v3 2048-D pool features for FID: pytorch-fid's FID-Inception (network=pytorch_fid) or torchvision's")
    register("liqe", "facedefense_metrics.liqe:build", summary="LIQE's fine-tuned CLIP ViT-B/32 with its 495 prompt embeddings")
    register("clip", "facedefense_metrics._clip:build", summary="open_clip model from a weights file, activation as the checkpoint (CLIP-S, CLIP-T, CLIP-I, CLIP-IQA)")
