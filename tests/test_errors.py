"""Every bad input: exit code 2, exactly one line on stderr naming the file (and tensor), nothing left behind.

Each case builds its inputs under tmp_path/in and points the output at tmp_path/out, whose listing
(hidden temporaries included, with each file's sha256) must be the same before and after the run.
"""

from __future__ import annotations

import os
import pickle
import sys

import pytest
import torch

from conftest import A, B, as_state, ladle_script, run_process, snapshot, temporaries, tensor, write_safetensors_raw


def assert_one_line_error(result, *needles: str) -> str:
    assert result.code == 2, (result.code, result.err)
    assert result.out == ""
    lines = result.err_lines
    assert len(lines) == 1, f"stderr is not one line: {result.err!r}"
    line = lines[0]
    assert line.startswith("ladle: error: "), line
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    return line


def assert_fails_cleanly(cli, out_dir, args, *needles):
    before = snapshot(out_dir)
    result = cli(*args)
    line = assert_one_line_error(result, *needles)
    assert snapshot(out_dir) == before
    assert temporaries(out_dir.parent) == []
    return line


# ---------------------------------------------------------------- unreadable files


def _truncated_data(ckpt):
    good = ckpt.st("good", as_state(A))
    raw = good.read_bytes()
    bad = ckpt.path("cut.safetensors")
    bad.write_bytes(raw[:-3])  # header intact, last tensor's data cut short
    return bad, "truncated"


def _truncated_header(ckpt):
    raw = ckpt.st("good", as_state(A)).read_bytes()
    bad = ckpt.path("cut.safetensors")
    bad.write_bytes(raw[:20])  # the 8-byte length survives, most of the JSON does not
    return bad, "truncated"


def _shorter_than_length_prefix(ckpt):
    bad = ckpt.path("tiny.safetensors")
    bad.write_bytes(b"\x10\x00\x00")
    return bad, "truncated"


def _header_not_json(ckpt):
    bad = ckpt.path("garbage.safetensors")
    bad.write_bytes((12).to_bytes(8, "little") + b"{not json!!}" + b"\x00" * 16)
    return bad, "not valid JSON"


def _header_not_object(ckpt):
    bad = ckpt.path("list.safetensors")
    bad.write_bytes((2).to_bytes(8, "little") + b"[]")
    return bad, "not a JSON object"


def _empty_file(ckpt):
    bad = ckpt.path("empty.safetensors")
    bad.write_bytes(b"")
    return bad, "truncated"


def _torch_garbage(ckpt):
    bad = ckpt.path("garbage.pt")
    bad.write_bytes(b"this is not a checkpoint at all")
    return bad, "cannot load as a PyTorch checkpoint"


def _torch_not_a_state_dict(ckpt):
    return ckpt.pt("list.pt", [torch.ones(2), torch.zeros(2)]), "does not hold a state dict"


def _torch_no_tensors(ckpt):
    return ckpt.pt("config.pt", {"lr": 0.1, "epochs": 3}), "holds no tensors"


def _directory_without_checkpoint(ckpt):
    d = ckpt.path("emptydir")
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d, "directory holds no checkpoint"


def _index_not_json(ckpt):
    d = ckpt.path("brokenindex")
    d.mkdir()
    (d / "model.safetensors.index.json").write_text("{ nope")
    return d, "corrupt index"


FILE_CASES = {
    "truncated-data": _truncated_data,
    "truncated-header": _truncated_header,
    "shorter-than-length-prefix": _shorter_than_length_prefix,
    "header-not-json": _header_not_json,
    "header-not-object": _header_not_object,
    "empty-file": _empty_file,
    "torch-garbage": _torch_garbage,
    "torch-not-a-state-dict": _torch_not_a_state_dict,
    "torch-no-tensors": _torch_no_tensors,
    "dir-without-checkpoint": _directory_without_checkpoint,
    "index-not-json": _index_not_json,
}


@pytest.mark.parametrize("case", FILE_CASES, ids=list(FILE_CASES))
@pytest.mark.parametrize("position", ["first", "second"])
def test_unreadable_file_cook(cli, ckpt, out_dir, case, position):
    bad, needle = FILE_CASES[case](ckpt)
    good = ckpt.st("ok", as_state(A))
    ingredients = [bad, good] if position == "first" else [good, bad]
    # For a directory the message names the directory, or the file inside it that is broken.
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", *ingredients, "-o", out_dir / "soup.safetensors"],
                         bad, needle)


@pytest.mark.parametrize("case", FILE_CASES, ids=list(FILE_CASES))
def test_unreadable_file_check(cli, ckpt, out_dir, case):
    bad, needle = FILE_CASES[case](ckpt)
    good = ckpt.st("ok", as_state(A))
    assert_fails_cleanly(cli, out_dir, ["check", good, bad], bad, needle)


@pytest.mark.parametrize("case", ["truncated-data", "header-not-json"])
def test_unreadable_base(cli, ckpt, out_dir, case):
    bad, needle = FILE_CASES[case](ckpt)
    a, b = ckpt.st("a", as_state(A)), ckpt.st("b", as_state(B))
    assert_fails_cleanly(cli, out_dir, ["cook", "interpolate", a, "--base", bad, "--alpha", "0.5",
                                        "-o", out_dir / "soup.safetensors"], bad, needle)
    assert_fails_cleanly(cli, out_dir, ["check", a, b, "--base", bad], bad, needle)


def test_truncated_data_names_the_cut_tensor(cli, ckpt, out_dir):
    # save_file lays tensors out in a known order; cut into the data of the last one in the file.
    state = {"first": tensor([1.0, 2.0, 3.0, 4.0]), "last": tensor([5.0, 6.0])}
    good = ckpt.st("good", state)
    from ladle.io.checkpoints import SafetensorsFile

    spans = SafetensorsFile(good).spans
    last = max(spans, key=lambda k: spans[k][1])
    bad = ckpt.path("cut.safetensors")
    bad.write_bytes(good.read_bytes()[:-2])
    line = assert_fails_cleanly(cli, out_dir, ["cook", "uniform", good, bad, "-o", out_dir / "s.safetensors"],
                                bad, f"tensor '{last}'", "truncated")
    assert f"{spans[last][1]}" in line  # says where the tensor should end


def test_missing_file(cli, ckpt, out_dir):
    a = ckpt.st("a", as_state(A))
    gone = ckpt.path("not-there.safetensors")
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, gone, "-o", out_dir / "soup.safetensors"],
                         gone, "no such file")
    assert_fails_cleanly(cli, out_dir, ["check", gone], gone, "no such file")


def test_header_lies_about_sizes(cli, ckpt, out_dir):
    # shape [3] of F32 needs 12 bytes, but the offsets span 8.
    bad = write_safetensors_raw(ckpt.path("liar.safetensors"),
                                {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\x00" * 8)
    good = ckpt.st("good", {"w": tensor([1.0, 2.0, 3.0])})
    line = assert_fails_cleanly(cli, out_dir, ["cook", "uniform", good, bad, "-o", out_dir / "s.safetensors"],
                                bad, "tensor 'w'", "header lies about sizes")
    assert "12" in line and "8" in line


def test_header_offsets_beyond_end_of_file(cli, ckpt, out_dir):
    # Consistent size (8 bytes for [2] F32), but it lies at data bytes 8..16 of a file that has 8.
    bad = write_safetensors_raw(ckpt.path("beyond.safetensors"),
                                {"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\x00" * 8)
    good = ckpt.st("good", {"w": tensor([1.0, 2.0])})
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", good, bad, "-o", out_dir / "s.safetensors"],
                         bad, "tensor 'w'", "truncated", "16")


def test_header_entry_with_unknown_dtype(cli, ckpt, out_dir):
    bad = write_safetensors_raw(ckpt.path("odd.safetensors"),
                                {"w": {"dtype": "F7", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8)
    assert_fails_cleanly(cli, out_dir, ["check", bad], bad, "tensor 'w'", "corrupt header entry")


# ---------------------------------------------------------------- pickles that need code


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["zip", "legacy", "plain-pickle"])
@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_pickle_that_needs_code_is_refused_and_never_run(cli, ckpt, out_dir, tmp_path, kind, suffix):
    marker = tmp_path / "PWNED"
    payload = {"w": tensor([1.0, 2.0]), "hook": _RunsACommand(marker)}
    path = ckpt.path("evil" + suffix)
    if kind == "plain-pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        ckpt.pt(path.name, payload, legacy=kind == "legacy")
    # Sanity: the payload really would run the command if unpickled without restrictions.
    assert not marker.exists()
    good = ckpt.st("good", {"w": tensor([1.0, 2.0])})
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", good, path, "-o", out_dir / "s.safetensors"],
                         path, "refused to unpickle")
    assert_fails_cleanly(cli, out_dir, ["check", path], path, "refused to unpickle")
    assert not marker.exists(), "the pickle's command ran"


def test_the_evil_pickle_does_run_a_command_when_trusted(ckpt, tmp_path):
    """Control for the test above: the payload is live (so 'marker absent' proves ladle refused it)."""
    marker = tmp_path / "PWNED"
    path = ckpt.pt("evil.pt", {"hook": _RunsACommand(marker)})
    torch.load(path, weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------- ingredients that do not fit together


def test_missing_key(cli, ckpt, out_dir):
    a = ckpt.st("a", as_state(A))
    b = ckpt.st("b", {"layer.weight": as_state(B)["layer.weight"]})
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out_dir / "s.safetensors"],
                         b, "tensor 'layer.bias'", "missing")


def test_extra_key(cli, ckpt, out_dir):
    a = ckpt.st("a", as_state(A))
    b = ckpt.st("b", {**as_state(B), "head.weight": tensor([1.0])})
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out_dir / "s.safetensors"],
                         b, "tensor 'head.weight'", "not present in")


def test_missing_key_in_base(cli, ckpt, out_dir):
    a, b = ckpt.st("a", as_state(A)), ckpt.st("b", as_state(B))
    base = ckpt.st("base", {"layer.weight": tensor([[0.0, 0.0], [0.0, 0.0]])})
    assert_fails_cleanly(cli, out_dir, ["cook", "model-stock", a, b, "--base", base, "-o", out_dir / "s.safetensors"],
                         base, "tensor 'layer.bias'", "missing")


def test_shape_mismatch(cli, ckpt, out_dir):
    a = ckpt.st("a", as_state(A))
    b = ckpt.st("b", {**as_state(B), "layer.bias": tensor([1.0, 2.0, 3.0])})
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out_dir / "s.safetensors"],
                         b, "tensor 'layer.bias'", "shape [3]", "[2]")


def test_dtype_mismatch_and_dtype_flag_fixes_it(cli, ckpt, out_dir):
    a = ckpt.st("a", as_state(A))
    b = ckpt.st("b", {**as_state(B), "layer.weight": as_state(B)["layer.weight"].half()})
    out = out_dir / "s.safetensors"
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out], b, "tensor 'layer.weight'",
                         "F16", "F32", "--dtype")
    result = cli("cook", "uniform", a, b, "-o", out, "--dtype", "float32")
    assert result.code == 0, result.err
    from safetensors.torch import load_file

    soup = load_file(out)
    assert soup["layer.weight"].dtype == torch.float32
    assert torch.equal(soup["layer.weight"], tensor([[2.0, 4.0], [4.0, 2.0]]))
    assert torch.equal(soup["layer.bias"], tensor([1.0, 0.0]))


def test_nonfinite_rejected_on_request_and_cooked_otherwise(cli, ckpt, out_dir):
    a = ckpt.st("a", as_state(A))
    b = ckpt.st("b", {**as_state(B), "layer.bias": tensor([float("nan"), 1.0])})
    out = out_dir / "s.safetensors"
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out, "--reject-nonfinite"],
                         b, "tensor 'layer.bias'", "NaN or Inf")
    result = cli("cook", "uniform", a, b, "-o", out)
    assert result.code == 0, result.err
    from safetensors.torch import load_file

    bias = load_file(out)["layer.bias"]
    assert torch.isnan(bias[0]) and bias[1].item() == 0.25


def test_nonfinite_in_base_rejected(cli, ckpt, out_dir):
    a, b = ckpt.st("a", as_state(A)), ckpt.st("b", as_state(B))
    base = ckpt.st("base", {**as_state(A), "layer.weight": tensor([[1.0, float("inf")], [0.0, 0.0]])})
    assert_fails_cleanly(cli, out_dir, ["cook", "interpolate", a, "--base", base, "--alpha", "0.5",
                                        "-o", out_dir / "s.safetensors", "--reject-nonfinite"],
                         base, "tensor 'layer.weight'", "NaN or Inf")


def test_nonfinite_rejected_mid_way_through_a_sharded_directory_output(cli, ckpt, out_dir):
    """Shards already written to the temporary folder are removed when a later tensor is rejected."""
    good = {f"t{i}": torch.full((4,), float(i)) for i in range(6)}
    bad = dict(good, t5=tensor([0.0, float("-inf"), 0.0, 0.0]))
    a, b = ckpt.st("a", good), ckpt.st("b", bad)
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out_dir / "soupdir", "--max-shard-size", "16",
                                        "--reject-nonfinite"], b, "tensor 't5'", "NaN or Inf")


def test_integer_disagreement_under_strict_policy(cli, ckpt, out_dir):
    a = ckpt.st("a", {**as_state(A), "bn.num_batches_tracked": torch.tensor(10)})
    b = ckpt.st("b", {**as_state(B), "bn.num_batches_tracked": torch.tensor(12)})
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out_dir / "s.safetensors", "--int-policy", "strict"],
                         b, "tensor 'bn.num_batches_tracked'", "strict")


# ---------------------------------------------------------------- bad parameters


def test_weights_count_differs_from_ingredients(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "weighted", a, b, "--weights", "1,2,3", "-o", out_dir / "s.safetensors"],
                         "weights", "3 values for 2 ingredients")
    assert_fails_cleanly(cli, out_dir, ["cook", "weighted", a, b, "--weights", "1", "-o", out_dir / "s.safetensors"],
                         "weights", "1 values for 2 ingredients")


def test_negative_weight(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "weighted", a, b, "--weights=-1,2", "-o", out_dir / "s.safetensors"],
                         "weights", "value 1 is -1.0", "non-negative")
    assert_fails_cleanly(cli, out_dir, ["cook", "weighted", a, b, "--weights=2,-0.5", "-o", out_dir / "s.safetensors"],
                         "weights", "value 2 is -0.5")


def test_all_zero_weights(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "weighted", a, b, "--weights", "0,0", "-o", out_dir / "s.safetensors"],
                         "weights", "all weights are zero")
    assert_fails_cleanly(cli, out_dir, ["cook", "weighted", a, b, "--weights", "0,0", "--no-normalize",
                                        "-o", out_dir / "s.safetensors"], "weights", "all weights are zero")


def test_nonfinite_weight(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "weighted", a, b, "--weights", "nan,1", "-o", out_dir / "s.safetensors"],
                         "weights", "finite")


def test_required_recipe_parameter_missing(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "weighted", a, b, "-o", out_dir / "s.safetensors"],
                         "weights", "weighted")
    assert_fails_cleanly(cli, out_dir, ["cook", "interpolate", a, b, "-o", out_dir / "s.safetensors"],
                         "alpha", "interpolate")


def test_unknown_recipe(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "soupreme", a, b, "-o", out_dir / "s.safetensors"],
                         "unknown recipe 'soupreme'", "uniform", "model-stock")


def test_parameter_of_another_recipe(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "--alpha", "0.3", "-o", out_dir / "s.safetensors"],
                         "alpha", "not a parameter of recipe 'uniform'")


def test_base_required_and_refused(cli, pair, out_dir, ckpt):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "model-stock", a, b, "-o", out_dir / "s.safetensors"],
                         "model-stock", "--base")
    base = ckpt.st("base", as_state(A))
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "--base", base, "-o", out_dir / "s.safetensors"],
                         "uniform", "does not use a base")
    assert_fails_cleanly(cli, out_dir, ["cook", "model-stock", a, "--base", base, "-o", out_dir / "s.safetensors"],
                         "model-stock", "at least two")


def test_bad_alpha(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "interpolate", a, b, "--alpha", "inf", "-o", out_dir / "s.safetensors"],
                         "alpha", "not a finite number")


def test_bad_dtype_and_sizes(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "--dtype", "int8", "-o", out_dir / "s.safetensors"],
                         "dtype", "int8", "not a floating-point dtype")
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "--max-shard-size", "lots", "-o", out_dir / "d"],
                         "max_shard_size", "lots")
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "--max-shard-size", "0", "-o", out_dir / "d"],
                         "max_shard_size", "positive")


def test_nothing_selected(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "--include", "nothing.*", "-o", out_dir / "s.safetensors"],
                         a, "no tensors selected")


# ---------------------------------------------------------------- outputs


def test_output_exists_without_force(cli, pair, out_dir):
    a, b = pair
    out = out_dir / "soup.safetensors"
    out.write_bytes(b"precious")
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out], out, "output exists", "--force")
    assert out.read_bytes() == b"precious"


def test_output_directory_exists_without_force(cli, pair, out_dir):
    a, b = pair
    out = out_dir / "soupdir"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out], out, "output exists")


def test_output_of_the_wrong_kind(cli, pair, out_dir):
    a, b = pair
    out = out_dir / "soup.safetensors"
    out.mkdir()
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out, "--force"], out, "is a directory")


def test_output_folder_missing(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out_dir / "nope" / "soup.safetensors"],
                         out_dir / "nope", "does not exist")


def test_file_output_above_max_shard_size(cli, pair, out_dir):
    a, b = pair  # 6 float32 values: a 24-byte soup
    out = out_dir / "soup.safetensors"
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b, "-o", out, "--max-shard-size", "20"],
                         out, "--max-shard-size", "directory")


def test_no_output_given(cli, pair, out_dir):
    a, b = pair
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", a, b], "no output")


def test_no_ingredients_given(cli, out_dir):
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", "-o", out_dir / "s.safetensors"], "no ingredients")


def test_index_naming_a_missing_shard(cli, ckpt, out_dir):
    d = ckpt.hf("sharded", as_state(A), shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    assert_fails_cleanly(cli, out_dir, ["cook", "uniform", d, d, "-o", out_dir / "s.safetensors"],
                         d / "model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing")


# ---------------------------------------------------------------- the real console script, in a real process


def test_console_script_exit_codes(ckpt, out_dir):
    a = ckpt.st("a", as_state(A))
    gone = ckpt.path("gone.safetensors")
    before = snapshot(out_dir)
    result = run_process([ladle_script(), "cook", "uniform", a, gone, "-o", out_dir / "s.safetensors"])
    assert_one_line_error(result, gone, "no such file")
    assert snapshot(out_dir) == before


def test_console_script_error_raised_mid_cook(ckpt, out_dir):
    """An error raised while mixing (after the progress bar would have started) is still one clean line."""
    a = ckpt.st("a", as_state(A))
    b = ckpt.st("b", {**as_state(B), "layer.bias": tensor([float("nan"), 1.0])})
    before = snapshot(out_dir)
    result = run_process([ladle_script(), "cook", "uniform", a, b, "-o", out_dir / "soupdir",
                          "--max-shard-size", "8", "--reject-nonfinite"])
    assert_one_line_error(result, b, "tensor 'layer.bias'")
    assert snapshot(out_dir) == before
    assert temporaries(out_dir.parent) == []


def test_python_dash_m_exit_code(ckpt, out_dir):
    raw = ckpt.st("a", as_state(A)).read_bytes()
    bad = ckpt.path("cut.safetensors")
    bad.write_bytes(raw[:-1])
    result = run_process([sys.executable, "-m", "ladle.cli", "check", bad])
    assert_one_line_error(result, bad, "truncated")


def test_negative_weight_as_a_separate_argument(cli, pair, out_dir):
    a, b = pair  # `--weights -1,2` must not be taken for an option by argparse
    assert_fails_cleanly(cli, out_dir, ["cook", "weighted", a, b, "--weights", "-1,2", "-o", out_dir / "s.safetensors"],
                         "weights", "value 1 is -1.0")
