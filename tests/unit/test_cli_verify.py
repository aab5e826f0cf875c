import json

from embedrank.cli import main


def test_verify_passes_on_the_tiny_model(tiny_embedding_dir, capsys):
    assert main(["verify", "--model", str(tiny_embedding_dir), "--sample", "16", "--max-length", "512", "--json"]) == 0
    shown = capsys.readouterr()
    result = json.loads(shown.out)
    assert result["passed"] and result["rows"] >= 16 and result["min_cosine"] >= 0.99999
    # It says what it is doing while it works, and how far the slow fp32 recipe is.
    assert "verify: loading" in shown.err and f"verify: recipe {result['rows']}/{result['rows']} rows" in shown.err


def test_verify_names_a_missing_model(tmp_path, capsys):
    assert main(["verify", "--model", str(tmp_path / "missing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
