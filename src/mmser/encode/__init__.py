"""Transcribe -> features: Whisper ASR, the frozen encoders, and the feature store."""
