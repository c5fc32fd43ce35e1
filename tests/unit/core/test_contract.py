import json

import pytest

from cdi.api.contract import (
    TERMINATION_MESSAGE_LIMIT,
    ImportSettings,
    Outcome,
    Progress,
    WorkerResult,
)


def test_settings_round_trip_through_env():
    s = ImportSettings(source="http", endpoint="https://h/x.qcow2", image_size=10 << 20, data_dir="/d",
                       access_key_id="u", secret_key="p", extra_headers=("A: 1", "B: 2"), checksum="sha256:" + "0" * 64,
                       preallocation=True, insecure_tls=True)
    assert ImportSettings.from_env(s.to_env()) == s


def test_settings_errors_name_the_variable():
    with pytest.raises(ValueError, match="IMPORTER_SOURCE"):
        ImportSettings.from_env({})
    with pytest.raises(ValueError, match="IMPORTER_IMAGE_SIZE"):
        ImportSettings.from_env({"IMPORTER_SOURCE": "http", "IMPORTER_IMAGE_SIZE": "ten"})
    with pytest.raises(ValueError, match="PREALLOCATION"):
        ImportSettings.from_env({"IMPORTER_SOURCE": "http", "PREALLOCATION": "maybe"})


def test_redacted_settings_hide_secrets():
    s = ImportSettings(source="http", secret_key="hunter2", extra_headers=("Authorization: Bearer tok",))
    text = json.dumps(s.redacted())
    assert "hunter2" not in text and "tok" not in text
    assert "Authorization" in text


def test_result_round_trip_exit_codes_and_size_cap(tmp_path):
    r = WorkerResult(Outcome.PERMANENT, "ChecksumError", "x" * 10000, details={"k": "v" * 5000})
    text = r.to_json()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    back = WorkerResult.from_json(text)
    assert back.outcome == Outcome.PERMANENT and back.exit_code == 2 and back.reason == "ChecksumError"
    assert WorkerResult(Outcome.SUCCEEDED, "Completed", "").exit_code == 0
    assert WorkerResult(Outcome.TEMPORARY, "TransientError", "").exit_code == 1
    with pytest.raises(ValueError, match="not JSON"):
        WorkerResult.from_json("Unable to process data")
    with pytest.raises(ValueError, match="version"):
        WorkerResult.from_json('{"outcome": "Succeeded"}')


def test_progress_file(tmp_path):
    p = tmp_path / "progress.json"
    Progress(50, 200, "Converting", resumes=1).write(str(p))
    got = Progress.read(str(p))
    assert got is not None and got.percent == 25.0 and got.stage == "Converting" and got.resumes == 1
    assert Progress.read(str(tmp_path / "missing")) is None
    assert Progress(1, 0).percent is None
