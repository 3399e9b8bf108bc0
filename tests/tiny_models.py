"""Tiny encoders built locally (no download), shared by the tests that need real
transformers models of the bundled kinds: a 2-layer Whisper and a 3-layer BERT."""

from pathlib import Path

import torch


def tiny_models(root: Path) -> tuple[str, str]:
    """A 2-layer Whisper encoder and a 3-layer BERT (32 wide), built locally."""
    from transformers import AutoTokenizer, BertConfig, BertModel, WhisperConfig, WhisperModel

    from mmser.encoders import bundled_text_dir

    torch.manual_seed(0)
    speech, text = root / "whisper", root / "bert"
    WhisperModel(WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2,
                               encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                               vocab_size=100, max_source_positions=1500, pad_token_id=0,
                               bos_token_id=1, eos_token_id=1, decoder_start_token_id=2)
                 ).save_pretrained(speech)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(text)
    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(text)
    return str(speech), str(text)
