import time

import numpy as np
import pytest
import torch

from mmser.encode.encoders import ModelNotFoundError, SpeechEncoder, TextEncoder


def test_unknown_name_fails_at_once_and_says_how(monkeypatch):
    monkeypatch.delenv("MMSER_ALLOW_DOWNLOADS", raising=False)
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as err:
        TextEncoder("no-such-org/no-such-model")
    assert time.perf_counter() - start < 20
    message = str(err.value)
    assert "no-such-org/no-such-model" in message and "MMSER_ALLOW_DOWNLOADS" in message
    assert "local folder" in message


def test_local_bert_folder_loads_and_cuts(tmp_path):
    from transformers import BertConfig, BertModel

    from mmser.encode.encoders import bundled_text_dir
    from transformers import AutoTokenizer

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4,
                        num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(tmp_path)
    enc = TextEncoder(str(tmp_path), layers=2)
    states, mask, ids = enc(["hello there", "a longer sentence than that"])
    assert states.shape[:2] == (3, 2) and states.shape[-1] == 32
    assert mask.sum(-1).tolist() == [len(enc.tokenizer(t)["input_ids"])
                                     for t in ["hello there", "a longer sentence than that"]]


def test_local_wav2vec2_folder_gives_states_and_frame_lengths(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                            conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                            do_stable_layer_norm=True)
    Wav2Vec2Model(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    enc = SpeechEncoder(str(tmp_path))
    assert enc.kind == "ssl" and enc.n_layers == 2 and enc.dim == 32
    waves = [np.zeros(1600, np.float32), np.zeros(3200, np.float32)]
    with torch.inference_mode():
        states, lengths = enc(waves)
    assert states.shape[0] == 3 and lengths.tolist()[0] < lengths.tolist()[1]


def test_local_whisper_folder_uses_variable_length_path(tmp_path):
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           vocab_size=100, max_source_positions=1500,
                           pad_token_id=0, bos_token_id=1, eos_token_id=1,
                           decoder_start_token_id=2)
    WhisperModel(config).save_pretrained(tmp_path)
    enc = SpeechEncoder(str(tmp_path), layers=1)
    with torch.inference_mode():
        states, lengths = enc([np.zeros(16_000, np.float32)])
    assert enc.kind == "whisper" and states.shape == (2, 1, 50, 32)
    assert lengths.tolist() == [50]


def _top_matches_full(enc, states, mask, k):
    from mmser.encode.encoders import top_layers

    top = top_layers(enc, k)
    with torch.no_grad():
        out = top(states[top.input_layer], mask)
    for i in range(states.shape[1]):
        n = int(mask[i].sum())
        torch.testing.assert_close(out[i, :n], states[-1][i, :n], atol=1e-4, rtol=0)
    # the copy is trainable on its own: the encoder's weights are untouched by it
    first = next(top.parameters())
    assert first.requires_grad and first.data_ptr() not in {p.data_ptr() for p in enc.parameters()}


def test_top_layers_reproduce_the_last_layer_from_cached_states(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, 16_000).astype(np.float32),
             rng.normal(0, 0.1, 24_000).astype(np.float32)]
    speech = SpeechEncoder()  # bundled Whisper tiny.en: layer norm after the last layer
    with torch.no_grad():
        states, lengths = speech(waves)
    mask = torch.arange(states.shape[2])[None] < lengths[:, None]
    _top_matches_full(speech, states, mask, 2)
    text = TextEncoder()
    with torch.no_grad():
        states, mask, _ = text(["so happy to see you", "no"])
    _top_matches_full(text, states, mask.bool(), 1)
    for stable in (True, False):  # wav2vec 2.0 / HuBERT style, both layer-norm placements
        config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                                conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                                num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                                do_stable_layer_norm=stable)
        folder = tmp_path / f"w2v-{stable}"
        Wav2Vec2Model(config).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
        ssl = SpeechEncoder(str(folder))
        with torch.no_grad():
            states, lengths = ssl(waves)
        mask = torch.arange(states.shape[2])[None] < lengths[:, None]
        _top_matches_full(ssl, states, mask, 2)


def test_local_distilbert_cuts_and_its_top_layers_match(tmp_path):
    """DistilBERT keeps its blocks in `transformer.layer` (BERT: `encoder.layer`); the
    HuBERT-CLAP profile's small text model is one."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from mmser.encode.encoders import bundled_text_dir

    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=3, n_heads=2,
                                     hidden_dim=64)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(tmp_path)
    assert TextEncoder(str(tmp_path)).n_layers == 3
    enc = TextEncoder(str(tmp_path), layers=2)
    assert enc.n_layers == 2 and enc.dim == 32
    with torch.no_grad():
        states, mask, _ = enc(["so happy to see you", "no"])
    assert states.shape[:2] == (3, 2)
    _top_matches_full(enc, states, mask.bool(), 2)


def test_cutting_the_bundled_whisper_leaves_the_shared_model_whole():
    assert SpeechEncoder(layers=2).n_layers == 2
    assert SpeechEncoder().n_layers == 4


def test_a_group_norm_ssl_model_encodes_each_clip_as_if_alone(tmp_path):
    # HuBERT base-like: its group-norm front end normalises over the padded time axis, so a
    # padded batch would change the shorter clip's states
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                          conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=2)
    assert config.feat_extract_norm == "group"
    HubertModel(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    enc = SpeechEncoder(str(tmp_path))
    rng = np.random.default_rng(0)
    short, long = (rng.normal(0, 0.1, n).astype(np.float32) for n in (1600, 4000))
    with torch.inference_mode():
        alone, n_alone = enc([short])
        batch, lengths = enc([short, long, short])
        long_alone, _ = enc([long])
    assert lengths.tolist() == [int(n_alone[0]), int(long_alone.shape[2]), int(n_alone[0])]
    for row in (0, 2):
        torch.testing.assert_close(batch[:, row, : lengths[row]], alone[:, 0],
                                   atol=1e-5, rtol=1e-5)
        assert not batch[:, row, lengths[row]:].any()  # zero padding
    torch.testing.assert_close(batch[:, 1], long_alone[:, 0], atol=1e-5, rtol=1e-5)
