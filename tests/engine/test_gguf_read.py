"""engine.gguf_read against gguf-py, the format's reference implementation: every metadata value, tensor view and
dequantized tensor of the SmolLM2 GGUF and of files written with gguf's own GGUFWriter (every value type, nested
arrays, F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors of awkward shapes, another alignment); damaged files fail in one line."""

import random

import gguf
import numpy as np
import pytest
import torch

from engine.gguf_read import GGUFFile, GGUFFormatError, dequantize

Q = gguf.GGMLQuantizationType


def _same_as_reference(path):
    ours, ref = GGUFFile(path), gguf.GGUFReader(str(path))
    fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}  # its header pseudo-fields
    assert list(ours.fields) == list(fields)
    for key, field in fields.items():
        got = ours.fields[key]
        if key == "nested":  # gguf-py's contents() flattens arrays of arrays (its own FIXME); ours keeps the nesting
            got = [x for part in got for x in part]
        assert got == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == b.shape.tolist(), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape and np.array_equal(a.data, b.data), a.name
        want = torch.from_numpy(np.asarray(gguf.quants.dequantize(b.data, b.tensor_type), dtype=np.float32).copy())
        got = dequantize(a)
        assert got.dtype == torch.float32 and got.shape == want.shape, a.name
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=a.name)
    return ours


def test_smollm2_gguf_matches_gguf_py():
    from engine.weights import smollm2_gguf_path

    f = _same_as_reference(smollm2_gguf_path())
    assert len(f.fields["tokenizer.ggml.tokens"]) == 49152
    assert {t.tensor_type for t in f.tensors} >= {Q.Q4_1, Q.Q8_0, Q.F32}


@pytest.mark.parametrize("alignment", [None, 64])
def test_written_files_of_every_type_match_gguf_py(tmp_path, alignment):
    rng = np.random.default_rng(random.randrange(2**32))
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_uint32("general.alignment", alignment)
    w.add_uint8("u8", 200), w.add_int8("i8", -7), w.add_uint16("u16", 65000), w.add_int16("i16", -30000)
    w.add_uint32("u32", 4_000_000_000), w.add_int32("i32", -2_000_000_000), w.add_float32("f32", 0.1)
    w.add_uint64("u64", 2**63 + 5), w.add_int64("i64", -(2**62)), w.add_float64("f64", 1e-300)
    w.add_bool("yes", True), w.add_bool("no", False), w.add_string("s", "héllo\n\"quoted\" 🙂"), w.add_string("e", "")
    w.add_array("ints", [int(x) for x in rng.integers(-1000, 1000, 37)])
    w.add_array("floats", [float(x) for x in rng.standard_normal(11)])
    w.add_array("strs", ["a", "", "ü" * 300, "x y"])
    w.add_array("bools", [True, False, True])
    w.add_array("nested", [[1, 2], [3]])
    w.add_array("empty", [])
    for i, (qtype, shape) in enumerate([(Q.F32, (3, 5)), (Q.F16, (7, 33)), (Q.BF16, (2, 64)), (Q.Q8_0, (5, 96)),
                                        (Q.Q4_0, (3, 64)), (Q.Q4_1, (9, 32)), (Q.F32, (13,))]):
        x = rng.standard_normal(shape).astype(np.float32) * 3
        data = gguf.quants.quantize(x, qtype) if qtype not in (Q.F32, Q.F16) else x.astype(
            np.float16 if qtype == Q.F16 else np.float32)
        w.add_tensor(f"t{i}", data, raw_shape=data.shape if qtype in (Q.F32, Q.F16) else None,
                     raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file()
    w.close()
    f = _same_as_reference(path)
    assert f.fields["s"] == "héllo\n\"quoted\" 🙂" and f.fields["u64"] == 2**63 + 5 and f.fields["nested"] == [[1, 2], [3]]


def test_damaged_files_fail_in_one_line(tmp_path):
    from engine.weights import WeightsError, load_gguf, smollm2_gguf_path

    src = smollm2_gguf_path().read_bytes()
    for name, data in [("magic", b"GGUX" + src[4:]), ("header", src[:200]), ("tensors", src[: len(src) // 2]),
                       ("empty", b"")]:
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(data)
        with pytest.raises(GGUFFormatError, match=p.name):
            GGUFFile(p)
        with pytest.raises(WeightsError, match="cannot read GGUF file"):
            load_gguf(p)
