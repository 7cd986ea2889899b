"""`siglip2 demo`: the whole SigLIP 2 training recipe (paper sec. 2.1-2.4) on a CPU in
minutes, on the synthetic coloured-shapes dataset (`training/data/synthetic.py`).

A tiny SigLIP 2 (two-layer towers, width 64) is trained from scratch through every
stage of the curriculum:
1. sigmoid + LocCa losses at 32 x 32 px (patch 8, 4 x 4 tokens);
2. from 80 % of the steps: + SILC self-distillation and TIPS masked prediction, with the
   EMA teacher initialized from the student (`LossCurriculum`);
3. from 95 %: the resolution switch to 48 x 48 px (6 x 6 tokens; position embedding
   resized, `ResolutionAdaptation`), all losses on.
The training images are rendered at the final 48 px; before the switch the pretrainer
downscales them in its train step (see `training/callbacks.py`).

It then evaluates on held-out images (another seed): zero-shot classification into the
24 (colour, shape) classes with prompts in English, French, German and Spanish, and
image <-> text retrieval recall@1; saves the trained model as a preset directory (with
its tokenizer, `DIR/preset`) and exports it as a SavedModel for serving
(`DIR/saved_model`, the summary's `export_path`; see `keras_siglip2/export.py`); plots
every loss term over training with the stage boundaries; and writes `summary.json`.

Run it with `siglip2 demo --out DIR [--steps N]` or `make demo`.
"""

import json
import math
import os
import shutil
import time

import keras
import numpy as np

from keras_siglip2.checks import check_int
from keras_siglip2.console import progress_bar
from keras_siglip2.convert.common import build_backbone, save_preset
from keras_siglip2.export import export
from keras_siglip2.models.locca_decoder import locca_decoder_for
from keras_siglip2.preprocessing import (
    SigLIP2ImageConverter,
    SigLIP2Preprocessor,
    SigLIP2Tokenizer,
)
from keras_siglip2.tasks import SigLIP2ZeroShotClassifier
from keras_siglip2.tasks.embedding import SigLIP2Embedder
from keras_siglip2.tasks.retrieval import paired_recalls
from keras_siglip2.training.callbacks import (
    LossCurriculum,
    ResolutionAdaptation,
    check_curriculum,
    switch_step,
)
from keras_siglip2.training.data import synthetic
from keras_siglip2.training.pretrainer import LOSS_TERMS, SigLIP2Pretrainer

DEMO_DEFAULTS = dict(
    steps=600,
    batch_size=32,
    image_size=32,
    target_image_size=48,
    patch_size=8,
    width=64,
    num_layers=2,
    num_heads=4,
    sequence_length=16,
    num_bins=32,
    num_local_views=2,
    num_examples=3000,
    num_heldout=240,
    steps_per_epoch=10,
    learning_rate=1e-3,
    teacher_momentum=0.98,
    self_distillation_start=0.8,
    resolution_start=0.95,
)


def build_demo_backbone(vocabulary_size, image_size, patch_size, width, num_layers,
                        num_heads, sequence_length):
    """The demo's tiny two-tower SigLIP 2 backbone."""
    return build_backbone(
        {
            "type": "fixed",
            "patch_size": patch_size,
            "hidden_dim": width,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "intermediate_dim": 2 * width,
            "image_size": image_size,
        },
        {
            "vocabulary_size": vocabulary_size,
            "hidden_dim": width,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "intermediate_dim": 2 * width,
            "projection_dim": width,
            "max_sequence_length": sequence_length,
        },
    )


class DemoProgress(keras.callbacks.Callback):
    """One progress bar over all steps (showing the running loss), and the per-epoch
    logs (the means of every loss term over the epoch, and the weights) in `records`."""

    def __init__(self, total_steps, verbose=True):
        super().__init__()
        self.records = []
        self.step = 0
        self.bar = progress_bar(total_steps, verbose=verbose)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        loss = (logs or {}).get("loss")
        if self.bar is not None:
            self.bar.update(self.step, values=[] if loss is None else [("loss", float(loss))])

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(np.asarray(v)) for k, v in (logs or {}).items()}
        self.records.append({"step": self.step, **logs})


def _stage_boundaries(steps, sd_start, res_start):
    return switch_step(sd_start, steps), switch_step(res_start, steps)


def _term_trend(records, term, start, end):
    """Mean of the term's per-epoch values in the first and last quarter of a stage."""
    values = [r[f"{term}_loss"] for r in records if start < r["step"] <= end
              and f"{term}_loss" in r]
    if len(values) < 2:
        return None
    k = max(1, len(values) // 4)
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    return {"first": first, "last": last, "decreased": last < first,
            "num_points": len(values)}


def plot_losses(records, stages, path):
    """PNG of every loss term (per-epoch means) over the steps, stage starts marked."""
    import matplotlib  # lazy: optional heavy dependency (plots only)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: optional heavy dependency (plots only)

    fig, axes = plt.subplots(1, len(LOSS_TERMS), figsize=(4 * len(LOSS_TERMS), 3.2))
    for ax, term in zip(axes, LOSS_TERMS):
        points = [(r["step"], r[f"{term}_loss"]) for r in records
                  if f"{term}_loss" in r and r.get(f"{term}_weight", 1.0) > 0]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=".", lw=1)
        for stage in stages[1:]:
            ax.axvline(stage["start_step"], color="gray", ls="--", lw=1)
            ax.text(stage["start_step"], ax.get_ylim()[1], stage["name"], fontsize=7,
                    rotation=90, va="top", ha="right", color="gray")
        ax.set_title(f"{term} loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def evaluate(backbone, tokenizer, heldout, batch_size=64):
    """Zero-shot accuracy per language and retrieval recall@1 (both ways)."""
    converter = SigLIP2ImageConverter(image_size=tuple(backbone.vision_encoder.image_size))
    preprocessor = SigLIP2Preprocessor(tokenizer=tokenizer, image_converter=converter)
    cls = heldout["classification"]
    accuracy = {}
    for language in synthetic.LANGUAGES:
        # Each class's full prompt (grammatical agreement differs per class), no template.
        classifier = SigLIP2ZeroShotClassifier(
            backbone, preprocessor, synthetic.prompts(language), templates=["{}"],
            batch_size=batch_size,
        )
        accuracy[language] = classifier.evaluate(
            cls["images"], [int(v) for v in cls["labels"]]
        )["accuracy"]
    accuracy["overall"] = float(np.mean([accuracy[lang] for lang in synthetic.LANGUAGES]))
    embedder = SigLIP2Embedder(backbone, preprocessor, batch_size=batch_size)
    ret = heldout["retrieval"]
    images = embedder.embed_images(ret["images"], verbose=False, skip_unreadable=False)
    texts = embedder.embed_texts([str(t) for t in ret["captions"]])
    recalls = paired_recalls(images.embeddings, texts, ks=(1,))
    return {
        "zero_shot_accuracy": accuracy,
        "chance_accuracy": 1.0 / len(cls["class_names"]),
        "recall_at_1": {
            "image_to_text": recalls["image_to_text"]["recall@1"],
            "text_to_image": recalls["text_to_image"]["recall@1"],
        },
        "recall_chance": 1.0 / recalls["num_pairs"],
        "num_classification_images": int(len(cls["labels"])),
        "num_retrieval_pairs": int(recalls["num_pairs"]),
    }


def _demo_config(steps, overrides):
    unknown = sorted(set(overrides) - set(DEMO_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown demo options {unknown}; known: {sorted(DEMO_DEFAULTS)}.")
    cfg = {**DEMO_DEFAULTS, **overrides}
    if steps is not None:
        cfg["steps"] = steps
    check_int("steps", cfg["steps"], minimum=4, hint=" (one per stage and more)")
    check_curriculum(cfg["self_distillation_start"], cfg["resolution_start"])
    return cfg


def _demo_data(cfg, seed):
    """(tokenizer, training dataset, held-out split, held-out seed)."""
    proto = synthetic.train_tokenizer()
    tokenizer = SigLIP2Tokenizer(proto=proto, sequence_length=cfg["sequence_length"])
    dataset = synthetic.synthetic_dataset(
        tokenizer, cfg["batch_size"], num_examples=cfg["num_examples"],
        image_size=cfg["target_image_size"], seed=seed,
        num_local_views=cfg["num_local_views"], num_bins=cfg["num_bins"],
    )
    heldout_seed = seed + 10_000
    heldout = synthetic.heldout_split(
        cfg["num_heldout"], cfg["target_image_size"], seed=heldout_seed
    )
    return tokenizer, dataset, heldout, heldout_seed


def _train_demo(cfg, tokenizer, dataset, seed, verbose):
    """Builds the tiny model and trains it through every stage; returns (pretrainer,
    progress callback, total steps, SILC/TIPS start step, resolution switch step)."""
    steps = cfg["steps"]
    sd_start, res_start = check_curriculum(cfg["self_distillation_start"],
                                           cfg["resolution_start"])
    backbone = build_demo_backbone(
        tokenizer.vocabulary_size(), cfg["image_size"], cfg["patch_size"], cfg["width"],
        cfg["num_layers"], cfg["num_heads"], cfg["sequence_length"],
    )
    decoder = locca_decoder_for(backbone, num_location_bins=cfg["num_bins"])
    pretrainer = SigLIP2Pretrainer(
        backbone, decoder=decoder, teacher_momentum=cfg["teacher_momentum"], seed=seed
    )
    steps_per_epoch = min(cfg["steps_per_epoch"], steps)
    epochs = math.ceil(steps / steps_per_epoch)
    total = epochs * steps_per_epoch
    pretrainer.compile(learning_rate=cfg["learning_rate"], total_steps=total)
    sd_step, res_step = _stage_boundaries(total, sd_start, res_start)
    progress = DemoProgress(total, verbose)
    callbacks = [
        LossCurriculum(sd_start),
        ResolutionAdaptation(res_start, target_image_size=cfg["target_image_size"]),
        progress,
    ]
    if verbose:
        print(
            f"Training a tiny SigLIP 2 for {total} steps: sigmoid + LocCa, + SILC/TIPS "
            f"from step {sd_step}, {cfg['target_image_size']} px from step {res_step}."
        )
    pretrainer.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch,
                   callbacks=callbacks, shuffle=False, verbose=0)  # the data is shuffled
    return pretrainer, progress, total, sd_step, res_step


def _save_and_export(backbone, tokenizer, out_dir):
    """The preset and its SavedModel in `out_dir`; returns (preset path, export path,
    export seconds)."""
    preset_path = os.path.join(out_dir, "preset")
    save_preset(
        backbone, preset_path, tokenizer=tokenizer,
        image_converter=SigLIP2ImageConverter(image_size=tuple(backbone.vision_encoder.image_size)),
        overwrite=True,
    )
    t3 = time.time()
    export_path = os.path.join(out_dir, "saved_model")
    if os.path.isdir(export_path):  # a previous demo's export in this folder
        shutil.rmtree(export_path)
    export(preset_path, export_path, format="saved_model")
    return preset_path, export_path, time.time() - t3


def _demo_stages(cfg, sd_step, res_step, total):
    return [
        {"name": "sigmoid+locca", "start_step": 0, "end_step": sd_step,
         "image_size": cfg["image_size"], "losses": ["sigmoid", "locca"]},
        {"name": "+silc+tips", "start_step": sd_step, "end_step": res_step,
         "image_size": cfg["image_size"], "losses": list(LOSS_TERMS)},
        {"name": f"{cfg['target_image_size']}px", "start_step": res_step, "end_step": total,
         "image_size": cfg["target_image_size"], "losses": list(LOSS_TERMS)},
    ]


def _print_result(metrics, out_dir, plot_path, preset_path, export_path):
    acc = metrics["zero_shot_accuracy"]
    print(
        "Zero-shot accuracy "
        + ", ".join(f"{k} {v:.1%}" for k, v in acc.items())
        + f" (chance {metrics['chance_accuracy']:.1%}); recall@1 image->text "
        f"{metrics['recall_at_1']['image_to_text']:.1%}, text->image "
        f"{metrics['recall_at_1']['text_to_image']:.1%} (chance "
        f"{metrics['recall_chance']:.1%}). Wrote {out_dir}/summary.json, "
        f"{plot_path}, preset {preset_path}, SavedModel {export_path}."
    )


def run_demo(out_dir, steps=None, seed=0, verbose=True, **overrides):
    """Trains, evaluates, saves and plots; returns the summary dict (also written to
    `out_dir/summary.json`). `overrides`: any key of `DEMO_DEFAULTS`."""
    cfg = _demo_config(steps, overrides)
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    timings = {}
    t0 = time.time()
    keras.utils.set_random_seed(seed)
    tokenizer, dataset, heldout, heldout_seed = _demo_data(cfg, seed)
    timings["data_s"] = time.time() - t0
    t1 = time.time()
    pretrainer, progress, total, sd_step, res_step = _train_demo(
        cfg, tokenizer, dataset, seed, verbose)
    timings["train_s"] = time.time() - t1
    backbone = pretrainer.backbone  # rebuilt at the target resolution by the switch
    t2 = time.time()
    metrics = evaluate(backbone, tokenizer, heldout)
    timings["eval_s"] = time.time() - t2
    preset_path, export_path, timings["export_s"] = _save_and_export(
        backbone, tokenizer, out_dir)
    stages = _demo_stages(cfg, sd_step, res_step, total)
    records = progress.records
    plot_path = plot_losses(records, stages, os.path.join(out_dir, "losses.png"))
    trends = {
        "sigmoid": _term_trend(records, "sigmoid", 0, sd_step),
        "locca": _term_trend(records, "locca", 0, sd_step),
        "silc": _term_trend(records, "silc", sd_step, total),
        "tips": _term_trend(records, "tips", sd_step, total),
    }
    final = records[-1] if records else {}
    summary = {
        **metrics,
        "stages": stages,
        "final_losses": {t: final.get(f"{t}_loss") for t in LOSS_TERMS},
        "loss_trends": trends,
        "loss_history": records,
        "export_path": export_path,
        "preset_path": preset_path,
        "plot_path": plot_path,
        "steps": total,
        "config": cfg,
        "seed": seed,
        "heldout_seed": heldout_seed,
        "timings_s": {**timings, "total_s": time.time() - t0},
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if verbose:
        _print_result(metrics, out_dir, plot_path, preset_path, export_path)
    return summary
