"""The loss terms of one `SigLIP2Pretrainer` batch (paper sec. 2.1-2.3), backend-agnostic:
sigmoid (sec. 2.1), LocCa (sec. 2.2), SILC and TIPS against the EMA teacher (sec. 2.3),
and their weighted sum; with an ACID curator (sec. 2.5) the sub-batch is selected first.
"""

import keras
from keras import ops

from keras_siglip2.layers.logit_head import l2_normalize
from keras_siglip2.training.losses import (
    masked_prediction_loss,
    self_distillation_loss,
    token_cross_entropy_from_features,
    update_center,
    weighted_token_mean,
)
from keras_siglip2.training.masking import random_patch_mask
from keras_siglip2.training.pretrainer.batch_spec import check_batch
from keras_siglip2.training.pretrainer.naflex import has_naflex_inputs, images_to_naflex
from keras_siglip2.training.pretrainer.recipe import (
    LOCCA_TASKS,
    TEACHER_TERMS,
    warmed_up_temperature,
)
from keras_siglip2.training.resize import resize_images


class LossTermsMixin:
    """`call`, `curate` and `loss_terms` of `SigLIP2Pretrainer`."""

    def call(self, inputs, training=False):
        """The loss terms of one batch (see the class docstring). With a `curator`, a
        training call first keeps the curated sub-batch of the super-batch `inputs`
        (ACID) and adds the `CURATION_METRICS`; evaluation uses the whole batch."""
        curation = {}
        if training and self.curator is not None:
            inputs, curation = self.curate(inputs)
        outputs = self.loss_terms(inputs, training=training)
        outputs.update(curation)
        return outputs

    def curate(self, super_batch):
        """(the kept sub-batch, {"acid_learnability": mean learnability of the kept
        examples, "acid_kept_fraction": kept / super-batch size}): the `curator`'s
        selection with the current learner (backend-agnostic; traced in the step)."""
        check_batch(self, super_batch)
        size = super_batch["token_ids"].shape[0]
        self.curator.check_super_batch_size(size)
        batch, indices, scores = self.curator.select_with_scores(
            self.backbone, super_batch, seed=self.seed_generator)
        kept = indices.shape[0]
        return batch, {
            "acid_learnability": ops.mean(ops.take(scores, indices, axis=0)),
            "acid_kept_fraction": ops.convert_to_tensor(kept / size, "float32"),
        }

    def loss_terms(self, inputs, training=False):
        """The loss terms of one (already curated) batch: {"loss", "<term>_loss",
        "<term>_weight"} for the configured terms."""
        check_batch(self, inputs)
        images, pooled, tokens, image_key_mask = self._student_forward(inputs)
        text = self.backbone.text_encoder.get_float32_embeddings(inputs["token_ids"])
        head = self.backbone.logit_head
        zimg = l2_normalize(ops.cast(pooled, "float32"))
        ztxt = l2_normalize(ops.cast(text, "float32"))
        terms = {"sigmoid": self.sigmoid_loss_fn(zimg, ztxt, head.log_temperature, head.bias)}
        if self.decoder is not None:
            terms.update(self._locca_terms(inputs, tokens, image_key_mask))
        if self.uses_teacher and self._teacher_stage_on:
            terms.update(self._teacher_terms(inputs, images, training))
        return self._weighted_total(terms)

    def _at_model_resolution(self, images):
        """Resizes (B, H, W, 3) images to the tower's resolution when they differ."""
        return resize_images(images, self.backbone.vision_encoder.image_size)

    def _random_parallel(self, batch_size):
        draw = keras.random.uniform((batch_size,), seed=self.seed_generator)
        return ops.cast(ops.less(draw, self.parallel_probability), "int32")

    def _student_forward(self, inputs):
        """(images at the model resolution or None, pooled embedding, un-pooled tokens
        or None, the tokens' key mask or None) of the student's image tower."""
        vision = self.backbone.vision_encoder
        if not self.fixed_resolution:  # NaFlex: padding tokens masked in pooling, decoder
            if self._naflex_from_images and not has_naflex_inputs(inputs):
                naflex = images_to_naflex(inputs["images"], vision.patch_size)
            else:
                naflex = {k: inputs[k] for k in self.backbone.vision_input_names}
            tokens = vision.get_tokens(naflex)
            key_mask = naflex["patch_mask"]
            return None, vision.head(tokens, key_mask=key_mask), tokens, key_mask
        images = self._at_model_resolution(inputs["images"])
        if self.decoder is not None:
            pooled, tokens = vision.get_pooled_and_tokens(images)
            return images, pooled, tokens, None
        return images, self.backbone.get_vision_embeddings(images), None, None

    def _locca_parallel(self, inputs, batch_size, num_tasks):
        """(num_tasks * B,) 0/1 rows decoded in parallel, task-major: the batch's
        "locca_parallel" ((B,) shared by an example's tasks, or (B, T)) or drawn."""
        parallel = inputs.get("locca_parallel")
        if parallel is None:
            return self._random_parallel(batch_size * num_tasks)
        parallel = ops.cast(parallel, "int32")
        if len(parallel.shape) == 2:
            return ops.reshape(ops.transpose(parallel), (-1,))
        return ops.concatenate([parallel] * num_tasks, axis=0) if num_tasks > 1 else parallel

    def _locca_terms(self, inputs, tokens, image_key_mask):
        """{"locca": ...}; with (B, 3, L) decoder fields also "locca_<task>" for each
        task of LOCCA_TASKS: the three task sequences are stacked on the batch axis
        (task-major, (3B, L)) and decoded in ONE pass over the image tokens repeated
        3x; each task's loss is sum(CE * weights) / max(sum(weights), 1) over its rows,
        and "locca" = sum_t w_t loss_t / sum of w_t over the tasks with any weight in
        the batch (`locca_task_weights`)."""
        batch_size = ops.shape(inputs["token_ids"])[0]
        multi = len(inputs["decoder_token_ids"].shape) == 3
        num_tasks = len(LOCCA_TASKS) if multi else 1

        def rows(x):  # (B, T, L) -> (T * B, L), task-major
            return ops.reshape(ops.transpose(x, (1, 0, 2)), (-1, x.shape[-1])) if multi else x

        prefix = inputs.get("decoder_prefix_mask")
        if num_tasks > 1:
            tokens = ops.concatenate([tokens] * num_tasks, axis=0)
            if image_key_mask is not None:
                image_key_mask = ops.concatenate([image_key_mask] * num_tasks, axis=0)
        features = self.decoder(
            rows(inputs["decoder_token_ids"]),
            tokens,
            parallel=self._locca_parallel(inputs, batch_size, num_tasks),
            image_key_mask=image_key_mask,
            prefix_mask=None if prefix is None else rows(prefix),
            return_features=True,
        )
        output = self.decoder.logits_dense
        ce = token_cross_entropy_from_features(
            features, output.kernel, output.bias, rows(inputs["decoder_targets"]))
        weights = rows(inputs["decoder_weights"])
        if not multi:
            return {"locca": weighted_token_mean(ce, weights)}
        return self._locca_task_mix(ce, weights, batch_size)

    def _locca_task_mix(self, ce, weights, batch_size):
        terms, total, norm = {}, 0.0, 0.0
        for t, task in enumerate(LOCCA_TASKS):
            rows = slice(t * batch_size, (t + 1) * batch_size)
            task_ce, task_weights = ce[rows], ops.cast(weights[rows], "float32")
            terms[f"locca_{task}"] = weighted_token_mean(task_ce, task_weights)
            present = ops.cast(ops.greater(ops.sum(task_weights), 0.0), "float32")
            total = total + self.locca_task_weights[t] * terms[f"locca_{task}"]
            norm = norm + self.locca_task_weights[t] * present
        terms["locca"] = ops.where(ops.greater(norm, 0.0),
                                   total / ops.maximum(norm, 1e-12), 0.0)
        return terms

    def current_teacher_temperature(self):
        """The teacher temperature of the next training step: `teacher_temperature`,
        or during a warm-up its linear ramp over the teacher-stage steps done."""
        if self.teacher_stage_steps is None:
            return self.teacher_temperature
        return warmed_up_temperature(
            self.teacher_temperature_start, self.teacher_temperature,
            ops.cast(self.teacher_stage_steps, "float32"),
            float(self.teacher_temperature_warmup_steps))

    def _temperatures(self):
        return dict(student_temperature=self.student_temperature,
                    teacher_temperature=self.current_teacher_temperature())

    def _teacher_terms(self, inputs, images, training):
        """{"silc": ..., "tips": ...} (the configured ones) against the EMA teacher.

        The global view is the batch's "teacher_images" when present (SILC / DINO: an
        augmented crop of the image), else the image itself. The teacher sees it
        unmasked; TIPS masks the student's copy of the same view (as iBOT: the masked
        patches are predicted at the same positions of the same view).
        """
        if "teacher_images" in inputs:
            images = self._at_model_resolution(inputs["teacher_images"])
        t_pooled, t_tokens = self.teacher_vision_encoder.get_pooled_and_tokens(images)
        t_pooled, t_tokens = ops.stop_gradient(t_pooled), ops.stop_gradient(t_tokens)
        terms = {}
        if self.use_self_distillation:
            terms["silc"] = self._silc_term(inputs, t_pooled, training)
        if self.use_masked_prediction:
            terms["tips"] = self._tips_term(inputs, images, t_tokens, training)
        if training and self.teacher_stage_steps is not None:
            self.teacher_stage_steps.assign(self.teacher_stage_steps + 1.0)
        return terms

    def _silc_term(self, inputs, t_pooled, training):
        vision = self.backbone.vision_encoder
        batch_size = ops.shape(inputs["token_ids"])[0]
        local = inputs["local_images"]
        shape = ops.shape(local)
        num_views = local.shape[1]
        flat = ops.reshape(local, (-1, shape[2], shape[3], shape[4]))
        # At the tower's own size `any_resolution` is the plain forward pass; at a
        # smaller `local_image_size` the position embedding is resized.
        flat = resize_images(flat, self.local_image_size or vision.image_size)
        s_pooled = vision.get_pooled_and_tokens(flat, any_resolution=True)[0]
        s_logits = ops.reshape(self.silc_head(s_pooled), (batch_size, num_views, -1))
        s_logits = ops.transpose(s_logits, (1, 0, 2))  # (V, B, K)
        t_logits = ops.stop_gradient(self.teacher_silc_head(t_pooled))
        loss = self_distillation_loss(s_logits, t_logits, self.silc_center,
                                      **self._temperatures())
        if training:
            self.silc_center.assign(
                update_center(self.silc_center, t_logits, self.center_momentum))
        return loss

    def _tips_term(self, inputs, images, t_tokens, training):
        batch_size = ops.shape(inputs["token_ids"])[0]
        num_tokens = self._num_image_tokens()
        mask = inputs.get("tips_mask")
        # A data-side mask drawn for another token count (the dataset's, before
        # `ResolutionAdaptation` changed the grid) is replaced by one for the current
        # count; the shapes are static, so this is decided when the step is traced.
        if mask is None or mask.shape[1] not in (None, num_tokens):
            mask = random_patch_mask(batch_size, num_tokens, self.mask_ratio,
                                     seed=self.seed_generator)
        s_tokens = self.backbone.vision_encoder.get_tokens(
            images, token_mask=mask, mask_token=self.mask_token)
        s_patch_logits = self.tips_head(s_tokens)
        t_patch_logits = ops.stop_gradient(self.teacher_tips_head(t_tokens))
        loss = masked_prediction_loss(s_patch_logits, t_patch_logits, mask, self.tips_center,
                                      **self._temperatures())
        if training:
            self.tips_center.assign(
                update_center(self.tips_center, t_patch_logits, self.center_momentum))
        return loss

    def _weighted_total(self, terms):
        """The outputs dict: each active term's float32 value and effective weight (the
        teacher terms' weights times the stage, 0 before the switch) and their sum."""
        zero = ops.zeros((), "float32")
        stage = ops.cast(self.teacher_stage_active, "float32")
        outputs = {}
        total = zero
        for name in self.active_terms:
            weight = ops.convert_to_tensor(self.loss_weights[name], "float32")
            if name in TEACHER_TERMS:
                weight = weight * stage
            value = ops.cast(terms.get(name, zero), "float32")
            total = total + weight * value
            outputs[f"{name}_loss"] = value
            outputs[f"{name}_weight"] = weight
        for task in LOCCA_TASKS:  # with (B, 3, L) LocCa fields: each task's loss
            if f"locca_{task}" in terms:
                outputs[f"locca_{task}_loss"] = ops.cast(terms[f"locca_{task}"], "float32")
        outputs["loss"] = total
        return outputs
