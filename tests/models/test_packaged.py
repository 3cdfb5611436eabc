"""Models shipped inside installed packages (``model.path = "package:NAME"``): the loader
on a tiny model in a zip the test writes, inside a package the test creates."""

from __future__ import annotations

import sys
import zipfile

import pytest
import torch

import models
from models import packaged


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package ``fake_model_pkg`` holding ``model.zip`` of a tiny BERT, registered as
    ``package:fake``."""
    tok = models.train_tokenizer(["good day bad night"] * 20, vocab_size=120, family="bert")
    base = models.build_tiny_model(
        "bert", task="classification", vocab_size=len(tok), seed=1,
        pad_token_id=int(tok.pad_token_id),
    )  # fmt: skip
    src = tmp_path / "src"
    base.save_pretrained(src)
    tok.save_pretrained(src)
    pkg = tmp_path / "site" / "fake_model_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    with zipfile.ZipFile(pkg / "model.zip", "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"inner/{f.name}")  # like the real archive: files under one folder
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("SECFED_CACHE_DIR", str(tmp_path / "cache"))
    entry = packaged.PackagedModel("fake_model_pkg", "model.zip", "fake-model==1", "fake")
    monkeypatch.setitem(packaged.PACKAGED, "fake", entry)
    yield base, pkg
    sys.modules.pop("fake_model_pkg", None)


def test_loads_the_packaged_model_with_its_weights(fake_package, tmp_path):
    base, _ = fake_package
    model, tok = models.load_pretrained("package:fake", task="classification")
    ids = tok(["good day"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(
            model(**ids).logits, base.eval()(**ids).logits
        )  # the same weights came back
    cached = list((tmp_path / "cache" / "packaged").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("fake-")
    models.load_pretrained("package:fake", task="classification")  # second load: cache
    assert list((tmp_path / "cache" / "packaged").iterdir()) == cached


def test_member_escaping_the_archive_is_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../../evil.json", "{}")
    with pytest.raises(models.ModelLoadError, match="escapes"):
        packaged.extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "evil.json").exists()


def test_missing_package_names_the_extra(monkeypatch):
    entry = packaged.PackagedModel("no_such_pkg_xyz", "model.zip", "no-such==1", "real-model")
    monkeypatch.setitem(packaged.PACKAGED, "absent", entry)
    with pytest.raises(models.ModelLoadError, match="real-model"):
        models.load_pretrained("package:absent", task="classification")


def test_unknown_packaged_name():
    with pytest.raises(models.ModelLoadError, match="all-minilm-l6-v2"):
        models.load_pretrained("package:nope", task="classification")


def test_zip_without_config_is_refused(tmp_path):
    z = tmp_path / "x.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(models.ModelLoadError, match=r"config\.json"):
        packaged.extract_archive(z, tmp_path / "out")


@pytest.mark.slow
def test_real_minilm_loads_when_installed():
    pytest.importorskip("all_minilm_l6_v2")
    model, tok = models.load_pretrained("package:all-minilm-l6-v2", task="classification")
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    assert len(tok) == 30522
