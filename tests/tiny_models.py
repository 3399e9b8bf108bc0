"""Tiny encoders built locally (no download), shared by the tests that need real
transformers models of the bundled kinds: a 2-layer Whisper and a 3-layer BERT; and the
manifest and feature cache of a tiny corpus, as the shared stages leave them."""

from pathlib import Path

import pandas as pd
import torch


def tiny_models(root: Path) -> tuple[str, str]:
    """A 2-layer Whisper encoder and a 3-layer BERT (32 wide), built locally."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmser.encode.encoders import bundled_text_dir

    torch.manual_seed(0)
    speech, text = root / "whisper", root / "bert"
    tiny_whisper(speech)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(text)
    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(text)
    return str(speech), str(text)


def tiny_whisper(folder: Path) -> None:
    """A 2-layer Whisper (32 wide) with the real front end: 80 mel bins, 30-s positions."""
    from transformers import WhisperConfig, WhisperModel

    WhisperModel(WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2,
                               encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                               vocab_size=100, max_source_positions=1500, pad_token_id=0,
                               bos_token_id=1, eos_token_id=1, decoder_start_token_id=2)
                 ).save_pretrained(folder)


def write_tiny_corpus(root: Path, rows: list[dict]) -> pd.DataFrame:
    """The manifest and corpus card of a tiny labelled corpus under `root` (leave-one-
    session-out), as the prepare and transcribe stages leave them."""
    from mmser.corpus import manifest

    df = pd.DataFrame(rows)
    manifest.write(df, root / "manifest.csv")
    manifest.write_corpus_info(root / "corpus", root / "corpus", name="synthetic",
                               protocol={"name": "loso"})
    return df


def cache_tiny_features(root: Path, df: pd.DataFrame, speech: str, text: str) -> None:
    """What the features stage caches: every state of the main encoders and one cut each
    (1 speech layer, 2 text layers), for the reference and the ASR transcripts."""
    from mmser.encode import features as F
    from mmser.corpus.audio import load_audio
    from mmser.encode.encoders import SpeechEncoder, TextEncoder

    waves = [load_audio(root / "corpus" / p).wave for p in df["path"]]
    speech_keys, text_keys = {}, {}
    for layers in (None, 1):
        enc = SpeechEncoder(speech, layers)
        digests = F.speech_features(F.FeatureCache(root / "features", enc.key), enc, waves)
        speech_keys[layers] = enc.key
    texts = sorted(set(df["text"]) | set(df["asr_text"]))
    for layers in (None, 2):
        enc = TextEncoder(text, layers)
        F.text_features(F.FeatureCache(root / "features", enc.key), enc, texts)
        text_keys[layers] = enc.key
    F.write_index(root / "features", df["utt_id"], digests,
                  speech=F.cut_keys(speech_keys, None), text=F.cut_keys(text_keys, None))


CLASSES = ["angry", "happy", "neutral", "sad"]
WORDS = {"angry": "this is outrageous", "happy": "what a lovely day",
         "neutral": "the box is on the table", "sad": "I miss them so much"}


def write_fake_manifest(root: Path, n_per_speaker: int, n_read: int,
                        read_text: str = "read sentence {}") -> pd.DataFrame:
    """The manifest of a tiny corpus without audio (2 sessions x 2 speakers x the 4 classes,
    plus `n_read` read-speech rows), for tests that fill the feature cache with fake states."""
    from mmser.corpus import manifest

    rows = []
    for s in range(4):
        for i in range(n_per_speaker):
            label = CLASSES[i % 4]
            rows.append({"utt_id": f"u{s}_{i}", "path": "x.wav", "speaker": f"spk{s}",
                         "session": f"S{s // 2 + 1}", "split": "labelled", "label": label,
                         "text": f"{WORDS[label]} {i}", "asr_text": WORDS[label],
                         "corpus": "synthetic", "duration": 1.0})
    for i in range(n_read):
        rows.append({"utt_id": f"r{i}", "path": "x.wav", "speaker": "spk9", "session": "R",
                     "split": "read", "text": read_text.format(i), "corpus": "synthetic"})
    df = manifest.conform(pd.DataFrame(rows))
    df["fold"] = [int(s[1]) - 1 if split == "labelled" else pd.NA
                  for s, split in zip(df["session"], df["split"])]
    manifest.write(df, root / "manifest.csv")
    manifest.write_corpus_info(root / "corpus", root, name="synthetic",
                               protocol={"name": "loso"})
    return df


def read_by_labelled_voices(corpus, voices: int = 4):
    """The corpus with its read split spoken by the labelled speakers `spk0..`, as in the
    default corpus (for the tests that pre-training never hears a test speaker)."""
    from mmser.training.data import Corpus

    df = corpus.df.copy()
    read = df["split"] == "read"
    df.loc[read, "speaker"] = [f"spk{i % voices}" for i in range(read.sum())]
    return Corpus(df, corpus.audio_root, corpus.protocol, corpus.name)
