import json

from embedrank.cli import main


def test_verify_passes_on_the_tiny_model(tiny_embedding_dir, capsys):
    assert main(["verify", "--model", str(tiny_embedding_dir), "--sample", "16", "--max-length", "512",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["rows"] >= 16 and result["min_cosine"] >= 0.99999


def test_verify_names_a_missing_model(tmp_path, capsys):
    assert main(["verify", "--model", str(tmp_path / "missing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
