# Written by `pipeline export` next to merged Qwen2.5-VL sequence-classification weights, so
# that transformers can load them:
#
#     AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)
#
# transformers has no Qwen2.5-VL sequence-classification class; ms-swift builds one at run
# time (Qwen2_5_VLForConditionalGeneration with lm_head replaced by identity and a
# bias-free `score` Linear, pooled at the last non-padding token). This class is that model.
# Checkpoint keys are the hub names (`visual.*`, `model.*`, `score.weight`); the class-level
# `_checkpoint_conversion_mapping` maps them onto the >= 4.52 module tree.
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel, Qwen2_5_VLPreTrainedModel


class Qwen2_5_VLForSequenceClassification(Qwen2_5_VLPreTrainedModel):
    _checkpoint_conversion_mapping = {
        "^visual": "model.visual",
        r"^model(?!\.(language_model|visual))": "model.language_model",
    }

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Qwen2_5_VLModel(config)
        self.score = nn.Linear(config.text_config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None, labels=None, **kwargs):
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            use_cache=False,
            **kwargs,
        ).last_hidden_state
        batch, seq = hidden.shape[:2]
        positions = torch.arange(seq, device=hidden.device)
        # The last attended token; without a mask the last non-pad token; else the last.
        if attention_mask is not None:
            last = (positions * attention_mask.to(positions.dtype)).argmax(-1)
        elif input_ids is not None and self.config.pad_token_id is not None:
            last = (positions * (input_ids != self.config.pad_token_id).to(positions.dtype)).argmax(-1)
        else:
            last = torch.full((batch,), seq - 1, device=hidden.device)
        pooled = hidden[torch.arange(batch, device=hidden.device), last]
        logits = self.score(pooled.to(self.score.weight.dtype))

        loss = None
        if labels is not None:
            problem = self.config.problem_type or (
                "regression" if self.num_labels == 1 else "single_label_classification"
            )
            if problem == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float().view(logits.squeeze(-1).shape))
            elif problem == "single_label_classification":
                loss = nn.functional.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
            else:
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)
