"""Text tables and text folders -> samples and splits (headstart.data.text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headstart.data.text import (
    TextSamples,
    load_text_dataset,
    looks_like_text_data,
    read_text_lines,
    read_text_table,
)
from headstart.errors import DataError


def write(path: Path, content: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def balanced_csv(path: Path, per_class: int = 50, classes: tuple[str, ...] = ("neg", "pos")) -> Path:
    lines = ["text,label"] + [f"{name} example number {i},{name}" for name in classes for i in range(per_class)]
    return write(path, "\n".join(lines) + "\n")


# --- column detection -------------------------------------------------------------------------------------------

def test_columns_found_by_name_case_insensitive(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", "id, Review ,SENTIMENT\n1,good film,pos\n2,bad film,neg\n")
    texts, labels, skipped, _ = read_text_table(table)
    assert texts == ["good film", "bad film"]
    assert labels == ["pos", "neg"]
    assert skipped == []


def test_ambiguous_text_columns_error_lists_columns_and_fix(tmp_path: Path) -> None:
    table = write(tmp_path / "news.csv", "title,text,label\nHead,Body,a\n")
    with pytest.raises(DataError) as error:
        read_text_table(table)
    message = str(error.value)
    assert "news.csv" in message and "['title', 'text', 'label']" in message
    assert "--text-col" in message and "text_column=" in message


def test_no_known_label_column_is_an_error(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", "text,stars,votes\nnice,5,3\n")
    with pytest.raises(DataError, match=r"holds the labels.*Columns: \['text', 'stars', 'votes'\]"):
        read_text_table(table)
    texts, labels, _, _ = read_text_table(table, require_labels=False)
    assert texts == ["nice"] and labels == [None]


def test_explicit_missing_column_is_named(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", "text,label\nnice,a\n")
    with pytest.raises(DataError, match=r"no column 'body'.*Columns: \['text', 'label'\]"):
        read_text_table(table, text_column="body")


def test_explicit_columns_override_detection(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", "title,text,label,stars\nT1,B1,x,5\nT2,B2,y,1\n")
    texts, labels, _, _ = read_text_table(table, text_column="Title", label_column="stars")
    assert texts == ["T1", "T2"] and labels == ["5", "1"]


def test_two_column_table_gives_the_other_column_the_other_role(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", "review,stars\nlovely,5\nawful,1\n")
    assert read_text_table(table)[:2] == (["lovely", "awful"], ["5", "1"])


# --- formats ----------------------------------------------------------------------------------------------------

def test_csv_quoted_commas_newlines_and_na_strings(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", 'text,label\n"one, two",a\n"first line\nsecond ""quoted""",b\nNA,a\nnull,b\n')
    texts, labels, skipped, _ = read_text_table(table)
    assert texts == ["one, two", 'first line\nsecond "quoted"', "NA", "null"]
    assert labels == ["a", "b", "a", "b"] and skipped == []


def test_tsv_keeps_quote_characters(tmp_path: Path) -> None:
    table = write(tmp_path / "t.tsv", 'label\tsentence\n1\t"quoted" start\n0\tit \'s "odd\n1\tplain\n')
    texts, labels, _, _ = read_text_table(table)
    assert texts == ['"quoted" start', 'it \'s "odd', "plain"]
    assert labels == ["1", "0", "1"]


def test_jsonl_bad_line_skipped_with_line_number(tmp_path: Path) -> None:
    table = write(tmp_path / "t.jsonl", '{"text": "hi", "label": 1}\n\n{oops\n[1, 2]\n{"text": "yo", "label": 0}\n')
    texts, labels, skipped, _ = read_text_table(table)
    assert texts == ["hi", "yo"] and labels == ["1", "0"]
    assert [item.path for item in skipped] == [f"{table}:3", f"{table}:4"]
    assert "not valid JSON" in skipped[0].reason and "JSON object" in skipped[1].reason


def test_json_array(tmp_path: Path) -> None:
    rows = [{"sentence": "a", "intent": "x"}, {"sentence": "b", "intent": "y"}, {"sentence": "", "intent": "x"}]
    table = write(tmp_path / "t.json", json.dumps(rows, indent=2))
    texts, labels, skipped, _ = read_text_table(table)
    assert texts == ["a", "b"] and labels == ["x", "y"]
    assert skipped[0].path == f"{table}:item 3" and skipped[0].reason == "empty text"


def test_parquet(tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    table = tmp_path / "t.parquet"
    pandas.DataFrame({"content": ["x", None, "z"], "label": [3, 1, 3]}).to_parquet(table)
    texts, labels, skipped, _ = read_text_table(table)
    assert texts == ["x", "z"] and labels == ["3", "3"]
    assert [item.reason for item in skipped] == ["empty text"]


# --- encodings --------------------------------------------------------------------------------------------------

def test_latin1_file_read_as_cp1252_with_note(tmp_path: Path) -> None:
    table = write(tmp_path / "train.csv", "text,label\ncafé crème,pos\n\u201csmart\u201d quotes,neg\n", "cp1252")
    texts, _, _, notes = read_text_table(table)
    assert texts == ["café crème", "\u201csmart\u201d quotes"]
    assert any("train.csv" in note and "cp1252" in note for note in notes)


def test_utf8_bom_removed_with_note(tmp_path: Path) -> None:
    table = write(tmp_path / "bom.csv", b"\xef\xbb\xbftext,label\nna\xc3\xafve,a\n")
    texts, labels, _, notes = read_text_table(table)
    assert texts == ["naïve"] and labels == ["a"]  # the BOM did not stick to the "text" header
    assert any("bom.csv" in note and "byte-order mark" in note for note in notes)


def test_utf16_with_bom(tmp_path: Path) -> None:
    table = write(tmp_path / "t.tsv", "text\tlabel\nüber\tb\n", "utf-16")
    assert read_text_table(table)[:2] == (["über"], ["b"])


# --- row problems -----------------------------------------------------------------------------------------------

def test_row_problems_reported_with_counts(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", "text,label\n"
                  "ok,a\n"          # 2
                  "   ,a\n"         # 3 empty text
                  "no label,\n"     # 4 missing label
                  "ok,a\n"          # 5 duplicate of 2
                  "ok,a\n"          # 6 duplicate of 2
                  "torn,a\n"        # 7 conflicts with 8
                  "torn,b\n"        # 8
                  "a,b,c,d\n"       # 9 malformed
                  "  padded  ,b\n")  # 10
    texts, labels, skipped, notes = read_text_table(table)
    assert texts == ["ok", "padded"] and labels == ["a", "b"]
    reasons = {item.path: item.reason for item in skipped}
    assert reasons[f"{table}:3"] == "empty text"
    assert reasons[f"{table}:4"] == "missing label"
    assert reasons[f"{table}:7"] == reasons[f"{table}:8"] == "same text with different labels: a, b"
    assert reasons[f"{table}:9"] == "expected 2 fields, found 4"
    assert len(skipped) == 5
    assert any("2 duplicate rows dropped" in note for note in notes)
    assert any("1 texts have different labels" in note for note in notes)


def test_no_usable_rows_is_an_error(tmp_path: Path) -> None:
    table = write(tmp_path / "t.csv", "text,label\n,a\n,b\n")
    with pytest.raises(DataError, match="no usable text: 2 rows"):
        load_text_dataset(table)


# --- folders ----------------------------------------------------------------------------------------------------

def make_txt_folder(root: Path, per_class: int = 5) -> Path:
    for name in ("neg", "pos"):
        for i in range(per_class):
            write(root / name / f"{i}.txt", f"  {name} review {i}\nsecond line\n")
    write(root / "pos" / ".DS_Store", b"\x00\x01")
    write(root / "neg" / "empty.txt", "   \n")
    return root


def test_txt_class_folders(tmp_path: Path) -> None:
    splits = load_text_dataset(make_txt_folder(tmp_path / "reviews"), val_fraction=0.4)
    assert splits.classes == ["neg", "pos"]
    assert len(splits.train) + len(splits.val) == 10
    assert splits.val.class_counts() == {"neg": 2, "pos": 2}
    assert "neg review 0\nsecond line" in splits.train.texts + splits.val.texts  # whole file, stripped
    assert [(Path(s.path).name, s.reason) for s in splits.skipped] == [("empty.txt", "empty text")]


def test_split_subfolders_of_txt_classes(tmp_path: Path) -> None:
    make_txt_folder(tmp_path / "data" / "train")
    make_txt_folder(tmp_path / "data" / "dev", per_class=2)
    splits = load_text_dataset(tmp_path / "data")
    assert splits.split.startswith("given")
    assert splits.val.class_counts() == {"neg": 2, "pos": 2} and len(splits.train) == 10
    assert "4 validation texts also appear in train" in splits.notes


def test_folder_of_split_tables(tmp_path: Path) -> None:
    balanced_csv(tmp_path / "d" / "my_train.csv", per_class=4)
    write(tmp_path / "d" / "my_valid.csv", "text,label\nfresh,pos\nneg example number 0,neg\n")
    write(tmp_path / "d" / "my_test.csv", "text,label\nunseen,neg\n")
    splits = load_text_dataset(tmp_path / "d")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 1)
    assert "1 validation texts also appear in train" in splits.notes
    json.dumps(splits.summary())


@pytest.mark.parametrize("names, expected", [
    (("a_train.csv", "b_train.csv", "dev.csv"), "several train tables"),
    (("dev.csv", "test.csv"), "none for train"),
])
def test_ambiguous_or_missing_train_table(tmp_path: Path, names: tuple[str, ...], expected: str) -> None:
    for name in names:
        balanced_csv(tmp_path / name, per_class=2)
    with pytest.raises(DataError, match=expected) as error:
        load_text_dataset(tmp_path)
    assert all(name in str(error.value) for name in names)


# --- splits -----------------------------------------------------------------------------------------------------

def test_stratified_split_proportions_and_seed(tmp_path: Path) -> None:
    table = balanced_csv(tmp_path / "t.csv", per_class=50, classes=("a", "b", "c"))
    first = load_text_dataset(table, val_fraction=0.2, seed=1)
    assert first.val.class_counts() == {"a": 10, "b": 10, "c": 10}
    assert first.train.class_counts() == {"a": 40, "b": 40, "c": 40}
    assert not set(first.train.texts) & set(first.val.texts)
    assert load_text_dataset(table, val_fraction=0.2, seed=1).val.texts == first.val.texts
    assert load_text_dataset(table, val_fraction=0.2, seed=2).val.texts != first.val.texts
    assert "stratified" in first.split and "seed 1" in first.split


def test_unseen_validation_label_is_an_error(tmp_path: Path) -> None:
    train = balanced_csv(tmp_path / "train.csv", per_class=3)
    val = write(tmp_path / "val.csv", "text,label\nhm,neutral\nok,pos\n")
    with pytest.raises(DataError, match=r"val.csv has labels that are not in the training data: \['neutral'\]"):
        load_text_dataset(train, val=val)


def test_too_few_classes_or_examples(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 2"):
        load_text_dataset(balanced_csv(tmp_path / "one.csv", per_class=5, classes=("only",)))
    table = write(tmp_path / "t.csv", "text,label\na,x\nb,x\nc,y\n")
    with pytest.raises(DataError, match=r"fewer than 2 examples: \{'y': 1\}") as error:
        load_text_dataset(table)
    assert "--val" in str(error.value)


def test_text_samples_as_inputs_and_numeric_class_order() -> None:
    train = TextSamples.from_lists([f"t{i}" for i in range(6)], ["10", "2", "10", "2", "10", "2"])
    assert train.classes == ["2", "10"] and train.labels == [1, 0, 1, 0, 1, 0]
    val = TextSamples.from_lists(["v", "w"], ["10", "10"], classes=["10"])
    splits = load_text_dataset(train, val=val)
    assert splits.val.labels == [1, 1] and splits.val.classes == ["2", "10"]  # re-indexed on train's classes
    with pytest.raises(DataError, match="not among the classes"):
        TextSamples.from_lists(["x"], ["3"], classes=["1", "2"])


# --- prediction input and detection -----------------------------------------------------------------------------

def test_read_text_lines(tmp_path: Path) -> None:
    assert read_text_lines(write(tmp_path / "in.txt", "first\r\n\n  second  \n")) == ["first", "second"]
    assert read_text_lines(write(tmp_path / "in.csv", "id,text\n1,a\n2,a\n3,\n")) == ["a", "a"]


def test_looks_like_text_data(tmp_path: Path, sample_dir: Path) -> None:
    assert looks_like_text_data(balanced_csv(tmp_path / "t.csv", per_class=2))
    assert looks_like_text_data(make_txt_folder(tmp_path / "folder"))
    speech = write(tmp_path / "speech.tsv", "path\tsentence\nclip_1.mp3\thello there\n")
    assert not looks_like_text_data(speech)
    assert not looks_like_text_data(write(tmp_path / "nums.csv", "a,b\n1,2\n"))
    assert not looks_like_text_data(sample_dir)  # image folder with train/ val/ test/
    assert not looks_like_text_data(sample_dir / "train")
    assert not looks_like_text_data(tmp_path / "missing.csv")


# --- real data --------------------------------------------------------------------------------------------------

def test_sst2_folder_of_tables(shared_data: Path) -> None:
    folder = shared_data / "text" / "sst2"
    if not folder.is_dir():
        pytest.skip(f"SST-2 is not in {shared_data}")
    assert len(read_text_lines(folder / "sst2_train.tsv")) == 6920  # every row parsed, quotes included
    splits = load_text_dataset(folder)
    assert splits.classes == ["0", "1"]
    # sst2_train.tsv repeats 9 (text, label) rows exactly; they are dropped, the first copy kept.
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6911, 872, 1821)
    assert any("9 duplicate rows dropped" in note for note in splits.notes)
    assert splits.val.class_counts() == {"0": 428, "1": 444}
    assert splits.test.class_counts() == {"0": 912, "1": 909}
    assert splits.skipped == []
    assert looks_like_text_data(folder)
