"""The benchmark's two configurations: FULL (`make bench`) and QUICK (the smoke run of the test suite), with the model sizes they time."""





B16_VISION = dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12,
                  intermediate_dim=3072, image_size=224)
B_TEXT = dict(vocabulary_size=256000, hidden_dim=768, num_layers=12, num_heads=12,
              intermediate_dim=3072, projection_dim=768, max_sequence_length=64)
TINY_VISION = dict(patch_size=8, hidden_dim=64, num_layers=2, num_heads=4,
                   intermediate_dim=128, image_size=32)
TINY_TEXT = dict(vocabulary_size=1000, hidden_dim=64, num_layers=2, num_heads=4,
                 intermediate_dim=128, projection_dim=64, max_sequence_length=16)

FULL = {
    "name": "full",
    # 9 rounds: on a shared 2-core machine two 5-round runs gave paired ratios 5-10 %
    # apart; the median of 9 is steadier and the whole run stays near 8 min.
    "repeats": 9,
    "min_seconds": 0.5,  # each timed sample loops the call until it lasts this long
    "matmul_size": 2048,
    "profile_calls": 3,  # forwards run under jax.profiler for the "profile" row
    # Batches sized so that `make bench` stays under 15 min on a 2-core machine; the
    # Keras `predict_on_batch` path is timed in the quick config only (it matched the
    # jitted path within 1 % at batch 8 in an earlier full run).
    "inference": {"arch": "B/16-224", "vision": B16_VISION, "text": B_TEXT,
                  "image_batch": 4, "text_batch": 16, "predict_on_batch": False},
    "naflex": {"arch": "B/16 NaFlex", "vision": dict(patch_size=16, hidden_dim=768,
               num_layers=12, num_heads=12, intermediate_dim=3072, position_grid_size=16),
               "resize_batch": 64, "resize_length": 256,
               "forward": [(256, 2), (1024, 2)], "repeats": 5},
    # Depth 6: compiling the four train steps dominates this row (about 2 min at depth 12).
    "training": {"arch": "Ti/16-224 towers at depth 6 (width 192, 3 heads, MLP 768), "
                         "text length 64, vocabulary 32,000",
                 "vision": dict(patch_size=16, hidden_dim=192, num_layers=6, num_heads=3,
                                intermediate_dim=768, image_size=224),
                 "text": dict(vocabulary_size=32000, hidden_dim=192, num_layers=6,
                              num_heads=3, intermediate_dim=768, projection_dim=192,
                              max_sequence_length=64),
                 "batch": 8, "repeats": 9, "local_crops": 8, "local_image_size": 96,
                 "pipeline_images": 64,
                 "source_size": 256, "pipeline_batches": 4},
    # bf16 vs float32 (issue 19 item 2): the step at the training row's size, the
    # 50-step loss comparison at a small size (about 1 min of compiling and stepping).
    "precision": {
        "step": {"arch": "Ti/16-224 towers at depth 6 (as the training row)",
                 "vision": dict(patch_size=16, hidden_dim=192, num_layers=6, num_heads=3,
                                intermediate_dim=768, image_size=224),
                 "text": dict(vocabulary_size=32000, hidden_dim=192, num_layers=6,
                              num_heads=3, intermediate_dim=768, projection_dim=192,
                              max_sequence_length=64),
                 "batch": 8, "repeats": 5},
        "loss_run": {"arch": "width 64, 2 layers, 32 px, text length 16, vocabulary 1,000",
                     "vision": TINY_VISION, "text": TINY_TEXT, "recipe": "full",
                     "batch": 16, "examples": 64, "steps": 50, "learning_rate": 1e-3},
    },
    "loss_memory": {"batches": [4096, 16384], "dim": 768, "chunk_size": 1024},
    # Compiled only (never run): B = 65,536 costs seconds; 65,536 is the peers' figure.
    "scaling": {"batches": [256, 1024, 4096, 16384, 32768, 65536], "dim": 768,
                "chunk_size": 1024, "step_batches": [256, 512, 1024, 2048, 4096],
                "repeats": 5,
                # Timed in their own alternation, 2 rounds: at B = 32,768 one loss step
                # is ~5 TFLOPs (27-35 s here) and the plain form's temporaries 12 GiB.
                "large_step_batches": [8192, 16384, 32768], "large_repeats": 2,
                "lengths": [128, 256, 512, 1024],
                "naflex_vision": dict(patch_size=16, hidden_dim=768, num_layers=2,
                                      num_heads=12, intermediate_dim=3072,
                                      position_grid_size=16),
                "image_size": 224,
                # The train step vs tower size: batch 4, text of 16 tokens over a 1,000
                # vocabulary (about 1 min for the three sizes at depth 2 on 2 cores).
                "train_batch": 4, "train_text_length": 16, "train_vocabulary": 1000,
                "towers": {"Ti": dict(patch_size=16, hidden_dim=192, num_layers=2,
                                      num_heads=3, intermediate_dim=768),
                           "S": dict(patch_size=16, hidden_dim=384, num_layers=2,
                                     num_heads=6, intermediate_dim=1536),
                           "B": dict(patch_size=16, hidden_dim=768, num_layers=2,
                                     num_heads=12, intermediate_dim=3072)}},
    # The LocCa decoder's loss at the paper's sizes: Gemma's 256k vocabulary + 1,024
    # location bins, B = 256 captions of 64 tokens, decoder width 768 (B-sized).
    "decoder_loss_memory": {"batch": 256, "length": 64, "width": 768,
                            "vocabulary": 257024, "chunk": 16384},
    "gpu": {"archs": {"B/16-224": (B16_VISION, B_TEXT),
                      "So400m/14-384": (dict(patch_size=14, hidden_dim=1152, num_layers=27,
                                             num_heads=16, intermediate_dim=4304,
                                             image_size=384),
                                        dict(B_TEXT, hidden_dim=1152, num_layers=27,
                                             num_heads=16, intermediate_dim=4304,
                                             projection_dim=1152))},
            "image_batch": 64, "matmul_size": 8192},
}

QUICK = {
    "name": "quick",
    "repeats": 2,
    "min_seconds": 0.02,
    "matmul_size": 256,
    "profile_calls": 2,
    "inference": {"arch": "tiny (width 64, 2 layers, 32 px)", "vision": TINY_VISION,
                  "text": TINY_TEXT, "image_batch": 4, "text_batch": 4,
                  "predict_on_batch": True},
    "naflex": {"arch": "tiny NaFlex", "vision": dict(patch_size=8, hidden_dim=64,
               num_layers=2, num_heads=4, intermediate_dim=128, position_grid_size=4),
               "resize_batch": 8, "resize_length": 16, "forward": [(16, 2), (32, 2)],
               "repeats": 2},
    "training": {"arch": "tiny (width 64, 2 layers, 32 px)", "vision": TINY_VISION,
                 "text": TINY_TEXT, "batch": 4, "repeats": 2, "local_crops": 2,
                 "local_image_size": 16,
                 "pipeline_images": 8, "source_size": 48, "pipeline_batches": 2},
    "precision": {
        "step": {"arch": "tiny (width 64, 2 layers, 32 px)", "vision": TINY_VISION,
                 "text": TINY_TEXT, "batch": 4, "repeats": 2},
        # sigmoid only: compiling the full recipe twice would double the smoke run's row
        "loss_run": {"arch": "tiny (width 64, 2 layers, 32 px)", "vision": TINY_VISION,
                     "text": TINY_TEXT, "recipe": "sigmoid", "batch": 4, "examples": 8,
                     "steps": 4, "learning_rate": 1e-3},
    },
    "loss_memory": {"batches": [256, 1024], "dim": 64, "chunk_size": 128},
    "scaling": {"batches": [256, 512, 1024], "dim": 64, "chunk_size": 128,
                "step_batches": [64, 128, 256], "repeats": 2, "lengths": [16, 32],
                "large_step_batches": [512], "large_repeats": 1,
                "naflex_vision": dict(patch_size=8, hidden_dim=64, num_layers=1,
                                      num_heads=4, intermediate_dim=128,
                                      position_grid_size=4),
                "image_size": 32,
                "train_batch": 2, "train_text_length": 8, "train_vocabulary": 100,
                "towers": {"tiny": dict(patch_size=8, hidden_dim=32, num_layers=1,
                                        num_heads=2, intermediate_dim=64),
                           "small": dict(patch_size=8, hidden_dim=64, num_layers=1,
                                         num_heads=4, intermediate_dim=128)}},
    "decoder_loss_memory": {"batch": 8, "length": 16, "width": 64, "vocabulary": 4096,
                            "chunk": 512},
    "gpu": {"archs": {"tiny": (TINY_VISION, TINY_TEXT)}, "image_batch": 4,
            "matmul_size": 256},
}
