"""Tests for pipeline.audio: sample conversion, resampling, G.711 mu-law, framing, levels and files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline.audio import (
    Framer,
    StreamResampler,
    float_to_pcm16,
    frame_bytes,
    load_audio,
    mulaw_decode,
    mulaw_encode,
    pcm16_to_float,
    pcm_duration_ms,
    read_wav,
    resample,
    rms_dbfs,
    trim_leading_silence,
    write_wav,
)

AUDIO_DIR = Path("/work/shared/audio")
SINE_HALF_SCALE_DBFS = 20 * np.log10(0.5 / np.sqrt(2))  # -9.03 dBFS


def _i16(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


def _pcm(values) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


def _tone(rate: int, freq: float = 1000.0, seconds: float = 1.0, amp: float = 0.5) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return float_to_pcm16(amp * np.sin(2 * np.pi * freq * t))


def _noise(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return float_to_pcm16(np.clip(rng.standard_normal(n) * 0.2, -1, 1))


def _peak_hz(pcm: bytes, rate: int) -> float:
    x = pcm16_to_float(pcm) * np.hanning(len(pcm) // 2)
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


# -- sample format -------------------------------------------------------------------------------------------


def test_pcm16_float_roundtrip_is_exact_for_every_int16():
    pcm = _pcm(np.arange(-32768, 32768))
    x = pcm16_to_float(pcm)
    assert x.dtype == np.float32
    assert x.min() == -1.0 and x.max() < 1.0
    assert float_to_pcm16(x) == pcm


def test_float_to_pcm16_clips():
    assert _i16(float_to_pcm16(np.array([2.0, -2.0, 1.0, -1.0, 0.0]))).tolist() == [
        32767,
        -32768,
        32767,
        -32768,
        0,
    ]


# -- resampling ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("from_rate,to_rate", [(8000, 16000), (16000, 48000), (22050, 8000)])
def test_resample_keeps_tone_frequency_and_level(from_rate, to_rate):
    out = resample(_tone(from_rate), from_rate, to_rate)
    assert abs(len(out) // 2 - to_rate) <= 1
    assert abs(_peak_hz(out, to_rate) - 1000.0) <= 1.0
    # Trim the filter's edge transients before measuring the level.
    edge = to_rate // 50 * 2
    assert rms_dbfs(out[edge:-edge]) == pytest.approx(SINE_HALF_SCALE_DBFS, abs=0.1)


@pytest.mark.parametrize("from_rate,to_rate", [(8000, 16000), (16000, 48000), (22050, 8000), (24000, 16000)])
@pytest.mark.parametrize("chunk", [1, 7, 160, 320, 1001])
def test_stream_resampler_equals_one_shot(from_rate, to_rate, chunk):
    pcm = _noise(from_rate // 2) + _tone(from_rate, seconds=0.3)
    rs = StreamResampler(from_rate, to_rate)
    streamed = b"".join(rs.process(pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)) + rs.flush()
    assert streamed == resample(pcm, from_rate, to_rate)


def test_stream_resampler_is_reusable_after_flush():
    pcm = _noise(4000)
    rs = StreamResampler(16000, 8000)
    first = rs.process(pcm) + rs.flush()
    second = rs.process(pcm) + rs.flush()
    assert first == second == resample(pcm, 16000, 8000)


def test_same_rate_passthrough_returns_input_object():
    pcm = _noise(320)
    assert resample(pcm, 16000, 16000) is pcm
    rs = StreamResampler(16000, 16000)
    assert rs.process(pcm) is pcm
    assert rs.flush() == b""


def test_same_rate_stream_carries_odd_bytes():
    pcm = _noise(100)
    rs = StreamResampler(8000, 8000)
    out = rs.process(pcm[:3]) + rs.process(pcm[3:])
    assert out == pcm


def test_resample_empty():
    assert resample(b"", 8000, 16000) == b""
    rs = StreamResampler(8000, 16000)
    assert rs.process(b"") == b""
    assert rs.flush() == b""


# -- G.711 mu-law --------------------------------------------------------------------------------------------
# Written independently of the module: the classic bias-0x84 segment algorithm (Sun g711.c / CCITT).


def _ref_ulaw_encode(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, 32635) + 0x84
    exponent = max((magnitude >> 7).bit_length() - 1, 0)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ref_ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    magnitude = ((((code & 0x0F) << 3) + 0x84) << ((code >> 4) & 0x07)) - 0x84
    return -magnitude if code & 0x80 else magnitude


# First row of the ITU-T G.191 (STL) mu-law expansion table.
G191_FIRST_CODES = [-32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956]


def test_mulaw_reference_values():
    assert mulaw_encode(_pcm([0, 32767, -32768])) == bytes([0xFF, 0x80, 0x00])
    decoded = _i16(mulaw_decode(bytes([0x80, 0x00, 0xFF, 0x7F]))).tolist()
    assert decoded == [32124, -32124, 0, 0]
    assert _i16(mulaw_decode(bytes(range(8)))).tolist() == G191_FIRST_CODES


def test_mulaw_decode_table_matches_reference():
    table = _i16(mulaw_decode(bytes(range(256)))).tolist()
    assert table == [_ref_ulaw_decode(c) for c in range(256)]


def test_mulaw_decode_table_shape():
    table = _i16(mulaw_decode(bytes(range(256)))).astype(int)
    assert all(table[c] == -table[c ^ 0x80] for c in range(256))  # odd-symmetric
    assert np.all(np.diff(table[:128]) > 0)  # 0x00..0x7F: -32124 rising to 0
    assert np.all(np.diff(table[128:]) < 0)  # 0x80..0xFF: 32124 falling to 0


def test_mulaw_encode_decode_roundtrip_of_codes():
    codes = bytes(range(256))
    back = mulaw_encode(mulaw_decode(codes))
    mismatched = {c: back[c] for c in range(256) if back[c] != c}
    assert mismatched == {0x7F: 0xFF}  # negative zero decodes to 0, which encodes as positive zero


def test_mulaw_encode_matches_reference_for_every_int16():
    samples = np.arange(-32768, 32768)
    encoded = mulaw_encode(_pcm(samples))
    # audioop drops to 14 bits with an arithmetic shift first, so negatives round away from zero by up to
    # 3 LSB; it equals the reference exactly on those 14-bit values.
    expected = bytes(_ref_ulaw_encode(s if s >= 0 else 4 * (s >> 2)) for s in samples.tolist())
    assert encoded == expected
    assert len(encoded) == len(samples)


def test_mulaw_quantisation_error_is_bounded():
    samples = np.arange(-32635, 32636, 7)
    decoded = _i16(mulaw_decode(mulaw_encode(_pcm(samples)))).astype(int)
    # A mu-law step is at most 1024 at the top segment; error is half a step plus the 14-bit truncation.
    assert np.max(np.abs(decoded - samples)) <= 512 + 4


# -- framing -------------------------------------------------------------------------------------------------


def test_frame_bytes():
    assert frame_bytes(8000, 20, sample_width=1) == 160  # mu-law
    assert frame_bytes(16000, 20) == 640
    assert frame_bytes(48000, 10) == 960


def test_framer_returns_whole_frames_and_keeps_remainder():
    f = Framer(4)
    assert f.push(b"ab") == []
    assert f.remainder == b"ab"
    assert f.push(b"cdefghij") == [b"abcd", b"efgh"]
    assert f.remainder == b"ij"
    assert f.push(b"kl") == [b"ijkl"]
    assert f.remainder == b""


def test_framer_flush():
    f = Framer(4)
    assert f.flush(pad=True) is None
    f.push(b"abcdef")
    assert f.flush(pad=True) == b"ef\x00\x00"
    assert f.remainder == b""
    f.push(b"x")
    assert f.flush(pad=False) == b"x"
    assert f.flush(pad=False) is None


def test_framer_mulaw_padding_uses_mulaw_silence():
    f = Framer(frame_bytes(8000, 20, 1), fill=b"\xff")
    frames = f.push(b"\x00" * 170)
    assert [len(x) for x in frames] == [160]
    assert f.flush(pad=True) == b"\x00" * 10 + b"\xff" * 150


def test_framer_rejects_bad_sizes():
    with pytest.raises(ValueError):
        Framer(0)
    with pytest.raises(ValueError):
        Framer(4, fill=b"")


# -- measurement ---------------------------------------------------------------------------------------------


def test_pcm_duration_ms():
    assert pcm_duration_ms(640, 16000) == 20.0
    assert pcm_duration_ms(32000, 16000) == 1000.0
    assert pcm_duration_ms(0, 8000) == 0.0


def test_rms_dbfs():
    assert rms_dbfs(b"") == -120.0
    assert rms_dbfs(b"\x00" * 320) == -120.0
    assert rms_dbfs(_pcm([1, -1] * 100)) == pytest.approx(20 * np.log10(1 / 32768))
    assert rms_dbfs(_pcm([-32768] * 100)) == pytest.approx(0.0)
    assert rms_dbfs(_tone(16000)) == pytest.approx(SINE_HALF_SCALE_DBFS, abs=0.01)


# -- files ---------------------------------------------------------------------------------------------------


def test_load_audio_flac():
    x = load_audio(str(AUDIO_DIR / "jfk.flac"))
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) / 16000 == pytest.approx(11.0, abs=0.1)
    assert 0.1 < np.abs(x).max() <= 1.0


def test_load_audio_ogg_at_other_rate():
    x16 = load_audio(str(AUDIO_DIR / "fleurs-en-000.ogg"))
    x8 = load_audio(str(AUDIO_DIR / "fleurs-en-000.ogg"), rate=8000)
    assert x16.dtype == x8.dtype == np.float32
    assert len(x16) / 16000 == pytest.approx(10.56, abs=0.1)
    assert len(x8) == pytest.approx(len(x16) / 2, abs=2)
    assert np.abs(x16).max() > 0


def test_wav_roundtrip(tmp_path):
    pcm = _noise(1234)
    path = str(tmp_path / "a.wav")
    write_wav(path, pcm, 24000)
    assert read_wav(path) == (pcm, 24000)


def test_read_wav_rejects_stereo(tmp_path):
    path = str(tmp_path / "stereo.wav")
    with wave.open(path, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00" * 8)
    with pytest.raises(ValueError):
        read_wav(path)


def test_trim_leading_silence_keeps_the_onset() -> None:
    rate = 22050
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 220 * np.arange(rate // 2) / rate)).astype(np.int16)
    lead = np.zeros(rate * 40 // 1000, dtype=np.int16)  # 40 ms, as Piper starts a sentence
    trimmed = trim_leading_silence(np.concatenate([lead, tone]), rate)
    kept = len(trimmed) - len(tone)
    assert 0 < kept <= rate * 15 // 1000  # about the 10 ms kept, never the whole 40
    assert np.array_equal(trimmed[kept:], tone)
    silence = np.zeros(rate // 10, dtype=np.int16)
    assert trim_leading_silence(silence, rate) is silence  # nothing to trim to: unchanged
