import json

from circuitfind.cli import main


def test_doctor_reports_versions(capsys):
    assert main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["circuitfind"]
    assert info["torch"].startswith("2.")
