"""The parts of transformers' API the adapters rely on (impls/rmpad/hf.py, impls/checkpointing/hf.py). When a release
moves one, these fail and say what moved, rather than the suites skipping or measuring something else; they skip
only where transformers is not installed at all."""

import dataclasses
import inspect

import pytest

from impls.checkpointing import TransformerConfig
from impls.checkpointing import hf as ckpt_hf
from impls.rmpad import hf
from impls.rmpad.reference import DecoderConfig
from tests.optional import needs

pytestmark = needs("transformers")


@pytest.fixture(scope="module")
def tf():
    return hf.transformers()


def parameters(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def test_the_version_is_known_without_importing(tf):
    assert hf.version() == tf.__version__ and hf.label() == f"transformers {tf.__version__}"


def test_data_collator_with_flattening(tf):
    assert hasattr(tf, "DataCollatorWithFlattening"), \
        f"transformers {tf.__version__} has no DataCollatorWithFlattening at the top level (impls/rmpad/hf.py)"
    missing = {"return_flash_attn_kwargs", "separator_id"} - parameters(tf.DataCollatorWithFlattening.__init__)
    assert not missing, f"DataCollatorWithFlattening() no longer takes {sorted(missing)}"
    batch = tf.DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{"input_ids": [3, 4]}, {"input_ids": [5]}],
                                                                         return_tensors="pt")
    expected = {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
    assert expected <= set(batch), f"DataCollatorWithFlattening no longer returns {sorted(expected - set(batch))}"
    assert batch["position_ids"].tolist() == [[0, 1, 0]], "DataCollatorWithFlattening's positions no longer restart"


def test_attention_implementation_names(tf):
    assert hasattr(tf, "AttentionInterface"), f"transformers {tf.__version__} has no AttentionInterface"
    known = set(tf.AttentionInterface().valid_keys())
    moved = {short: name for short, name in hf.ATTENTION.items() if name not in known}
    assert not moved, f"transformers {tf.__version__} knows no attention {moved}; it knows {sorted(known)}"


@pytest.mark.parametrize("attn", ["sdpa", "flex"])
def test_the_attention_implementation_asked_for_is_the_one_built(attn):
    config = hf.build(DecoderConfig(vocab=16, d_model=32, n_heads=2, n_layers=1), attn, 8).config
    assert config._attn_implementation == hf.ATTENTION[attn], \
        f"LlamaConfig(attn_implementation={hf.ATTENTION[attn]!r}) built {config._attn_implementation!r}"


def test_llama_config_fields(tf):
    # LlamaConfig keeps an unknown keyword as a plain attribute, silently: a renamed field would size nothing
    fields = ({f.name for f in dataclasses.fields(tf.LlamaConfig)} if dataclasses.is_dataclass(tf.LlamaConfig)
              else parameters(tf.LlamaConfig.__init__))
    used = set(hf.config_kwargs(32, 2, 1, 16)) | set(ckpt_hf.config_kwargs(TransformerConfig(32, 2, 1), 8))
    assert not used - fields, f"LlamaConfig of transformers {tf.__version__} has no field {sorted(used - fields)}"


def test_activation_checkpointing_switch(tf):
    model = tf.PreTrainedModel
    if hasattr(model, "activation_checkpointing_enable"):
        takes = parameters(model.activation_checkpointing_enable)
        assert "activation_checkpointing_kwargs" in takes, f"activation_checkpointing_enable{sorted(takes)}"
    else:
        assert hasattr(model, "gradient_checkpointing_enable"), \
            f"transformers {tf.__version__} has neither activation_ nor gradient_checkpointing_enable"
        takes = parameters(model.gradient_checkpointing_enable)
        assert "gradient_checkpointing_kwargs" in takes, f"gradient_checkpointing_enable{sorted(takes)}"
    model = ckpt_hf.build(TransformerConfig(32, 2, 2), 8, "full")
    flags = [getattr(layer, "gradient_checkpointing", None) for layer in model.layers]
    assert flags == [True, True], f"after the switch, the decoder layers' gradient_checkpointing flags read {flags}"
