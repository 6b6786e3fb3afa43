"""`flask --app app caption FOLDER`: a folder captioned on the tiny BLIP model, file by file (never the words)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from app import create_app
from conftest import image_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = ["a.jpg", "a.png", "sub/deeper/b.jpeg"]  # sorted, as the command walks them


@pytest.fixture
def folder(tmp_path):
    """Images in nested folders, with what is not one: a corrupt PNG, a text file, hidden files and a hidden folder."""
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    (root / "a.png").write_bytes(image_bytes("PNG", color=(200, 30, 30)))
    (root / "a.jpg").write_bytes(image_bytes("JPEG", color=(30, 30, 200)))  # same stem as a.png, same folder
    (root / "sub" / "deeper" / "b.jpeg").write_bytes(image_bytes("JPEG", size=(64, 48)))
    (root / "sub" / "notes.md").write_text("not an image")
    (root / ".hidden.png").write_bytes(image_bytes("PNG"))
    (root / ".cache" / "c.png").write_bytes(image_bytes("PNG"))
    return root


def corrupt(folder):
    """A PNG signature followed by junk, in a sub-folder."""
    (folder / "sub" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 20)


@pytest.fixture
def run(tiny_blip, tmp_path):
    """Run the command through Flask's CLI runner on an app built as the flask command builds it (no services)."""

    def invoke(*args, **config):
        settings = {
            "TESTING": True, "SECRET_KEY": "test-secret", "HISTORY_FILE": str(tmp_path / "history.json"),
            "CAPTION_MODEL": tiny_blip["caption"],
            "VQA_MODEL": str(tmp_path / "no-vqa-here"),  # never loaded: the command needs the captioner only
            "CAPTION_MIN_LENGTH": 3, "CAPTION_MAX_LENGTH": 12, "FEW_ROW_LINEAR": "on",
            "MAX_BATCH": 2,  # several batches, so that the next one is read while one is captioned
        }
        settings.update(config)
        app = create_app(settings, services=False)
        return app.test_cli_runner().invoke(args=["caption", *map(str, args)])

    return invoke


def files_under(folder) -> set[str]:
    """Every file under folder, relative to it with "/"."""
    return {os.path.relpath(os.path.join(parent, name), folder).replace(os.sep, "/")
            for parent, _, names in os.walk(folder) for name in names}


def last_line(result) -> str:
    return result.stdout.strip().splitlines()[-1]


def test_txt_beside_each_image_and_failures_named(run, folder):
    corrupt(folder)
    before = files_under(folder)
    result = run(folder, "--prefix", "ŝks,", "--suffix", "— photo")
    assert result.exit_code == 1, result.output
    assert last_line(result) == "3 captioned, 0 skipped, 1 failed"
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith("failed: sub/bad.png: ") and "PNG" in failed[0]
    assert "image/s" in result.stderr  # the progress bar, with its rate
    assert "Traceback" not in result.output
    # a.jpg comes first, so it gets a.txt and a.png gets a.png.txt: neither overwrites the other.
    written = {"a.txt", "a.png.txt", "sub/deeper/b.txt"}
    assert files_under(folder) == before | written  # nothing for the corrupt, hidden or non-image files; no temporaries
    mask = os.umask(0)
    os.umask(mask)
    for name in written:
        text = (folder / name).read_bytes().decode("utf-8")
        assert text.startswith("ŝks, ") and text.endswith(" — photo") and "\n" not in text
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~mask  # a data set's file, not a private 0600 one


def test_jsonl_one_row_an_image(run, folder):
    result = run(folder, "--format", "jsonl", "--prefix", "sks")
    assert result.exit_code == 0, result.output
    assert last_line(result) == "3 captioned, 0 skipped, 0 failed"
    lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["file_name"] for row in rows] == GOOD
    assert all(set(row) == {"file_name", "text"} and row["text"].startswith("sks") for row in rows)
    assert not [name for name in files_under(folder) if name.endswith(".txt")]


def test_csv_one_row_an_image(run, folder):
    result = run(folder, "--format", "csv", "--suffix", "end")
    assert result.exit_code == 0, result.output
    with open(folder / "metadata.csv", encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert reader.fieldnames == ["file_name", "caption"]
    assert [row["file_name"] for row in rows] == GOOD
    assert all(row["caption"].endswith("end") for row in rows)


def test_skip_existing_leaves_a_caption_file_alone(run, folder):
    kept = folder / "a.txt"
    kept.write_text("my own caption", encoding="utf-8")
    os.utime(kept, (1_000_000_000, 1_000_000_000))
    result = run(folder, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert last_line(result) == "2 captioned, 1 skipped, 0 failed"
    assert kept.read_text(encoding="utf-8") == "my own caption" and kept.stat().st_mtime == 1_000_000_000
    assert (folder / "a.png.txt").is_file() and (folder / "sub" / "deeper" / "b.txt").is_file()


@pytest.mark.parametrize("layout", ["jsonl", "csv"])
def test_skip_existing_keeps_listed_rows(run, folder, layout):
    if layout == "jsonl":
        (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "mine"}) + "\n")
    else:
        (folder / "metadata.csv").write_text("file_name,caption\r\na.png,mine\r\n")
    result = run(folder, "--format", layout, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert last_line(result) == "2 captioned, 1 skipped, 0 failed"
    if layout == "jsonl":
        lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [(row["file_name"], row["text"]) for row in map(json.loads, lines)]
    else:
        with open(folder / "metadata.csv", encoding="utf-8", newline="") as file:
            rows = [(row["file_name"], row["caption"]) for row in csv.DictReader(file)]
    assert rows[0] == ("a.png", "mine")
    assert sorted(name for name, _ in rows[1:]) == ["a.jpg", "sub/deeper/b.jpeg"]


@pytest.mark.parametrize("layout", ["txt", "jsonl"])
def test_interrupted_run_keeps_what_it_made(run, folder, monkeypatch, layout):
    import models

    batches = []
    real = models.Captioner.caption_batch

    def stopped_at_the_second(self, inputs, prompt=None):
        batches.append(len(inputs))
        if len(batches) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second batch is captioned
        return real(self, inputs, prompt)

    monkeypatch.setattr(models.Captioner, "caption_batch", stopped_at_the_second)
    result = run(folder, "--format", layout)
    assert result.exit_code == 1 and "Aborted" in result.output
    if layout == "txt":  # the first batch (MAX_BATCH=2) is a.jpg and a.png
        assert {name for name in files_under(folder) if name.endswith(".txt")} == {"a.txt", "a.png.txt"}
    else:
        lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["file_name"] for line in lines] == ["a.jpg", "a.png"]
    monkeypatch.setattr(models.Captioner, "caption_batch", real)
    result = run(folder, "--format", layout, "--skip-existing")
    assert last_line(result) == "1 captioned, 2 skipped, 0 failed"


def test_all_captioned_already_loads_no_model(run, folder):
    for name in ("a.txt", "a.png.txt", "sub/deeper/b.txt"):
        (folder / name).write_text("done")
    result = run(folder, "--skip-existing", CAPTION_MODEL=str(folder / "no-model-here"))
    assert result.exit_code == 0, result.output
    assert last_line(result) == "0 captioned, 3 skipped, 0 failed"


@pytest.mark.parametrize("where", ["missing", "a file"])
def test_folder_not_a_directory(run, folder, where):
    target = folder / "nothing-here" if where == "missing" else folder / "a.png"
    result = run(target)
    assert result.exit_code == 2
    assert "Invalid value for 'FOLDER'" in result.output and "Traceback" not in result.output


def test_missing_model_stops_as_the_start_does(run, folder):
    result = run(folder, CAPTION_MODEL=str(folder / "no-model-here"))
    assert result.exit_code == 4  # the server start's exit status for a model or setting it cannot use
    assert "CAPTION_MODEL: no such folder" in result.stderr and "Traceback" not in result.output
    assert not [name for name in files_under(folder) if name.endswith(".txt")]


def test_prompt_too_long_for_the_model(run, folder):
    result = run(folder, "--prompt", " ".join(["word"] * 40))
    assert result.exit_code == 2
    assert "--prompt is too long" in result.output and "Traceback" not in result.output
    assert not [name for name in files_under(folder) if name.endswith(".txt")]


def test_prompt_that_fits(run, folder):
    result = run(folder, "--prompt", "a picture of")
    assert result.exit_code == 0, result.output
    assert all(isinstance((folder / name).read_text(encoding="utf-8"), str)
               for name in ("a.txt", "a.png.txt", "sub/deeper/b.txt"))


def test_the_real_flask_command(tiny_blip, folder, tmp_path):
    corrupt(folder)
    env = dict(os.environ, CAPTION_MODEL=tiny_blip["caption"], VQA_MODEL=str(tmp_path / "no-vqa-here"),
               SECRET_KEY="test-secret", FEW_ROW_LINEAR="on", CAPTION_MAX_LENGTH="12", CAPTION_MIN_LENGTH="3")
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "caption", str(folder), "--format", "csv"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "3 captioned, 0 skipped, 1 failed"
    assert "failed: sub/bad.png: " in done.stderr and "Traceback" not in done.stderr
    with open(folder / "metadata.csv", encoding="utf-8", newline="") as file:
        assert [row["file_name"] for row in csv.DictReader(file)] == GOOD


def test_a_fifo_or_device_named_like_an_image_is_left_out_not_waited_for(run, folder):
    os.mkfifo(folder / "sub" / "pipe.png")
    result = run(folder)
    assert result.exit_code == 0, result.output
    assert last_line(result) == "3 captioned, 0 skipped, 0 failed"
    assert "sub/pipe.txt" not in files_under(folder)


def test_a_prefix_on_two_lines_is_refused_before_any_model_loads(run, folder):
    result = run(folder, "--prefix", "sks\nphoto")
    assert result.exit_code == 2 and "--prefix holds a line break" in result.output
    assert not [name for name in files_under(folder) if name.endswith(".txt")]
