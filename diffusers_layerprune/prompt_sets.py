"""Names of the public prompt sets the families default to (``--prompts`` specs read by ``data.load_prompts``).

Blocks of real models are scored and distilled on prompts written by users of the Pick-a-Pic app (Kirstain et al.,
2023; MIT license); HPDv2's benchmark prompts, used for evaluation, come from COCO captions and DiffusionDB, so the
two do not share a source. `layerprune run` also drops any scoring/training prompt that equals an evaluation prompt.
Kept apart from ``data`` so that family records name them without importing the data machinery.
"""

PICKAPIC_SCORING_PROMPTS = "yuvalkirstain/pickapic_v1_no_images:validation_unique@caption"  # 500 unique prompts
PICKAPIC_TRAINING_PROMPTS = "yuvalkirstain/pickapic_v1_no_images:train@caption"  # ~584k rows, deduplicated on load
